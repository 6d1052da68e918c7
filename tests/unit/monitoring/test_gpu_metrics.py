"""GPU metrics (service/gpu_metrics.py): absent without NVML, Triton's names and units with it.

This machine has no NVIDIA driver, so the real pynvml finds no library: that is the first test.
The others give the module a binding with NVML's calls and two devices (one that reports no
power, as some boards do), to check names, labels, units and both ways the series reach a
scrape. The real NVML was checked once on a lent H200 (docs/OPERATIONS.md, "GPU metrics").
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service import gpu_metrics
from service.metrics import Metrics
from tests.support.helpers import ROOT


class NVMLError(Exception):
    pass


class FakeNvml:
    """NVML's calls as pynvml names them, over two devices (readings in NVML's units)."""

    NVMLError = NVMLError

    def __init__(self, devices: int = 2):
        self.devices = devices
        self.util = [37, 90]

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return self.devices

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h}".encode()

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=80 * 2**30, used=(h + 1) * 2**30, free=0)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self.util[h], memory=10)

    def nvmlDeviceGetPowerUsage(self, h):
        if h == 1:
            raise NVMLError("not supported")
        return 312_500  # mW

    def nvmlDeviceGetPowerManagementLimit(self, h):
        if h == 1:
            raise NVMLError("not supported")
        return 700_000


def scrape(metrics: Metrics) -> dict[tuple[str, str], float]:
    text = metrics.render()[0].decode()
    return {
        (s.name, s.labels.get("gpu_uuid", "")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith("nv_")
    }


def test_without_nvml_there_are_no_gpu_series_and_no_error():
    metrics = Metrics()
    assert gpu_metrics.install(metrics) == 0  # the real pynvml: no libnvidia-ml here
    assert b"nv_gpu" not in generate_latest(metrics.registry)


def test_one_process_reads_the_devices_at_each_scrape():
    nvml = FakeNvml()
    metrics = Metrics()
    assert gpu_metrics.install(metrics, nvml) == 2
    first = scrape(metrics)
    assert first == {
        ("nv_gpu_utilization", "GPU-0"): 0.37,
        ("nv_gpu_utilization", "GPU-1"): 0.90,
        ("nv_gpu_memory_total_bytes", "GPU-0"): 80 * 2**30,
        ("nv_gpu_memory_total_bytes", "GPU-1"): 80 * 2**30,
        ("nv_gpu_memory_used_bytes", "GPU-0"): 2**30,
        ("nv_gpu_memory_used_bytes", "GPU-1"): 2 * 2**30,
        ("nv_gpu_power_usage", "GPU-0"): 312.5,  # watts
        ("nv_gpu_power_limit", "GPU-0"): 700.0,
    }
    nvml.util[0] = 5
    assert scrape(metrics)[("nv_gpu_utilization", "GPU-0")] == 0.05


MULTIPROCESS = """
from service import gpu_metrics
from service.metrics import Metrics
from tests.unit.monitoring.test_gpu_metrics import FakeNvml
nvml = FakeNvml()
metrics = Metrics()
assert gpu_metrics.install(metrics, nvml) == 2
nvml.util[1] = 55
metrics.refresh()
"""


def test_the_accelerator_process_writes_them_where_a_front_end_scrape_reads_them(tmp_path):
    """Several processes: the one with the devices writes at each refresh; another process
    (a front end) serves them in its scrape."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", MULTIPROCESS], env=env, cwd=ROOT, check=True, timeout=60)
    reader = (
        "from service.metrics import Metrics; import sys; "
        "sys.stdout.write(Metrics().render()[0].decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", reader],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    samples = {
        (s.name, s.labels.get("gpu_uuid")): s.value
        for f in text_string_to_metric_families(out)
        for s in f.samples
        if s.name.startswith("nv_")
    }
    assert samples[("nv_gpu_utilization", "GPU-1")] == 0.55
    assert samples[("nv_gpu_memory_used_bytes", "GPU-1")] == 2 * 2**30
    assert samples[("nv_gpu_power_usage", "GPU-0")] == 312.5
    assert ("nv_gpu_power_usage", "GPU-1") not in samples
