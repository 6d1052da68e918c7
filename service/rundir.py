"""The pod's run directory (a fresh temporary folder per pod, made by the supervisor): what each
process finds there, by name. The only place these names are written."""

ENGINE_SOCKET = "engine.sock"  # the accelerator process listens here for the front ends
JOBS_SOCKET = "jobs.sock"  # the supervisor's in-memory job store, for the front ends
ADMISSION = "admission"  # the pod's admission counters, one per front end (pod_admission.py)
HEARTBEATS = "heartbeats"  # each front end's last beat of its event loop (heartbeats.py)
METRICS = "metrics"  # prometheus-client's multiprocess files of every process
