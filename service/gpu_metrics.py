"""GPU metrics from NVML, named and labelled as Triton names them.

    nv_gpu_utilization{gpu_uuid}         fraction of the last sample period a kernel ran (0-1)
    nv_gpu_memory_total_bytes{gpu_uuid}  device memory
    nv_gpu_memory_used_bytes{gpu_uuid}   device memory in use (every process on the device)
    nv_gpu_power_usage{gpu_uuid}         power draw, watts
    nv_gpu_power_limit{gpu_uuid}         power limit, watts

Read by the process that owns the accelerator, through NVIDIA's own binding (``nvidia-ml-py``,
module ``pynvml``). Where NVML cannot start (no driver, no device: a CPU node, the tests here)
nothing is registered and the series are absent; nothing fails.

In one process they are read at each scrape (a collector). With several processes the scrape
is served by a front end from the samples every process writes (``service.metrics``), so the
accelerator process writes them into gauges at each :meth:`Metrics.refresh` (once a second;
Triton polls every 2 s).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .metrics import Metrics

log = logging.getLogger(__name__)

# name -> help, in the order of a sample's fields
SERIES = {
    "nv_gpu_utilization": "GPU utilization rate [0.0 - 1.0)",
    "nv_gpu_memory_total_bytes": "GPU total memory, in bytes",
    "nv_gpu_memory_used_bytes": "GPU used memory, in bytes",
    "nv_gpu_power_usage": "GPU power usage in watts",
    "nv_gpu_power_limit": "GPU power management limit in watts",
}


@dataclass(frozen=True)
class Sample:
    """One device's readings, in :data:`SERIES` order (None: the device does not report it)."""

    uuid: str
    utilization: float | None
    memory_total: float | None
    memory_used: float | None
    power_usage: float | None
    power_limit: float | None

    def values(self) -> tuple[float | None, ...]:
        return (
            self.utilization,
            self.memory_total,
            self.memory_used,
            self.power_usage,
            self.power_limit,
        )


class Nvml:
    """The devices NVML sees. Raises on construction where NVML cannot start.

    Args:
        nvml: the ``pynvml`` module (tests pass another binding).
    """

    def __init__(self, nvml: Any = None):
        if nvml is None:
            import pynvml

            nvml = pynvml
        self.nvml = nvml
        nvml.nvmlInit()
        count = nvml.nvmlDeviceGetCount()
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self.uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in self.handles]

    def read(self) -> list[Sample]:
        return [self._read(uuid, h) for uuid, h in zip(self.uuids, self.handles, strict=True)]

    def _read(self, uuid: str, handle: Any) -> Sample:
        nvml = self.nvml
        memory = self._try(nvml.nvmlDeviceGetMemoryInfo, handle)
        utilization = self._try(nvml.nvmlDeviceGetUtilizationRates, handle)
        power = self._try(nvml.nvmlDeviceGetPowerUsage, handle)  # milliwatts
        limit = self._try(nvml.nvmlDeviceGetPowerManagementLimit, handle)
        return Sample(
            uuid,
            None if utilization is None else utilization.gpu / 100.0,
            None if memory is None else float(memory.total),
            None if memory is None else float(memory.used),
            None if power is None else power / 1000.0,
            None if limit is None else limit / 1000.0,
        )

    def _try(self, read: Any, handle: Any) -> Any:
        """A reading, or None where this device does not support it (NVMLError)."""
        try:
            return read(handle)
        except self.nvml.NVMLError:
            return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class NvmlCollector(Collector):
    """Reads the devices at each scrape (one process)."""

    def __init__(self, nvml: Nvml):
        self.nvml = nvml

    def collect(self) -> Iterable[Metric]:
        families = [GaugeMetricFamily(n, h, labels=["gpu_uuid"]) for n, h in SERIES.items()]
        for sample in self.nvml.read():
            for family, value in zip(families, sample.values(), strict=True):
                if value is not None:
                    family.add_metric([sample.uuid], value)
        return families


class NvmlGauges:
    """Writes the devices' readings into gauges at each refresh (several processes)."""

    def __init__(self, nvml: Nvml, metrics: Metrics):
        self.nvml = nvml
        # One process writes them: "livemax" drops its samples when it dies (a restart).
        self.gauges = [
            Gauge(n, h, ["gpu_uuid"], registry=metrics.registry, multiprocess_mode="livemax")
            for n, h in SERIES.items()
        ]

    def refresh(self) -> None:
        try:
            samples = self.nvml.read()
        except Exception as exc:  # a driver reset: keep serving, keep the last values
            log.warning("NVML read failed: %s", exc)
            return
        for sample in samples:
            for gauge, value in zip(self.gauges, sample.values(), strict=True):
                if value is not None:
                    gauge.labels(sample.uuid).set(value)


def install(metrics: Metrics, nvml: Any = None) -> int:
    """Export the GPU metrics of this process's devices with ``metrics``; the number of
    devices (0: NVML unavailable, nothing exported)."""
    try:
        devices = Nvml(nvml)
    except Exception as exc:  # pynvml.NVMLError_LibraryNotFound, DriverNotLoaded...
        log.info("no GPU metrics: NVML unavailable (%s)", type(exc).__name__)
        return 0
    if not devices.handles:
        return 0
    if metrics.multiprocess:
        metrics.on_refresh(NvmlGauges(devices, metrics).refresh)
    else:
        metrics.registry.register(NvmlCollector(devices))
    log.info("GPU metrics from NVML: %d device(s)", len(devices.handles))
    return len(devices.handles)
