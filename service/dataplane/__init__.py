"""The dataplane: what every protocol and the job runner call, with no HTTP in it.

``request.py`` holds the decoded request and its result; ``dataplane.py`` picks the pipeline,
checks readiness, admits, sets the deadline, decodes and fans the images out through the
engine, and ranks the outputs; ``admission.py`` bounds the images in flight.
"""
