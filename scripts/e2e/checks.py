# ruff: noqa: T201  (a command-line tool: it reports on stdout)
"""The client side of `make e2e` (scripts/e2e/run.sh), run on the host with the project's venv.

Subcommands:
  make-weights  ResNet50 with seeded random weights whose classifier bias favours three known
                ImageNet classes by wide margins: a real weights file whose top 3 is known.
  expect        The top 3 of the helm-test image under those weights, computed here with the
                service's own decode, normalisation and post-processing (JSON on stdout).
  classify      POST /v1/classify through a port-forward; the answer must match `expect`.
  grpc          KServe V2 ModelInfer (classification extension) over gRPC; same check.
  wheel-gaps    Requirements of the wheels in a folder, under another Python's markers, that
                no wheel there satisfies by name (what `pip download` here skipped for it).
  steady        Classify in a loop, one connection per request, until a stop file appears;
                every request must succeed (a rollout must not drop one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "charts" / "resnet-serve" / "files"))

# ImageNet classes the classifier's bias favours, best first: golden retriever, tabby cat,
# Egyptian cat. The classifier's kernel is zero, so the logits are the bias whatever the
# random backbone computes (its activations' scale at random initialisation is anyone's
# guess): every image gets these three, with softmax scores ~0.25, ~0.09, ~0.03.
FAVOURED = (207, 281, 285)
TOP_K = 3
SCORE_TOLERANCE = 0.02


def test_png() -> bytes:
    import helm_test  # charts/resnet-serve/files: the image `helm test` classifies

    return helm_test.test_png()


def make_weights(out: Path) -> None:
    import keras
    import numpy as np

    from service.model.loader import build_architecture

    keras.utils.set_random_seed(21)
    model = build_architecture("resnet50")
    dense = model.layers[-1]
    kernel, bias = dense.get_weights()
    bias = np.zeros_like(bias)
    for rank, index in enumerate(FAVOURED):
        bias[index] = 6.0 - rank
    dense.set_weights([np.zeros_like(kernel), bias])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name("tmp-" + out.name)
    model.save_weights(str(tmp))
    tmp.rename(out)


def expect(weights: Path) -> list[dict]:
    import numpy as np

    from service.dataplane.postprocess import probabilities, top_k
    from service.model.labels import imagenet_labels
    from service.model.loader import load_model
    from service.model.normalize import normalize
    from service.preprocess.decode import PreprocessConfig, decode

    loaded = load_model("resnet50", str(weights), strict=True)
    pixels = decode(test_png(), PreprocessConfig(size=loaded.input_size)).pixels
    batch = normalize(pixels[None].astype(np.float32), loaded.normalize)
    outputs = np.asarray(loaded.model.predict(batch, verbose=0))
    probs = probabilities(outputs, loaded.outputs_probabilities)
    return [
        {"label": p.label, "score": float(p.score)}
        for p in top_k(probs[0], TOP_K, imagenet_labels())
    ]


def compare(got: list[dict], expected: list[dict], where: str) -> None:
    labels = [p["label"] for p in got]
    want = [p["label"] for p in expected]
    if labels != want:
        raise SystemExit(f"FAIL {where}: top {TOP_K} {labels}, expected {want}")
    for g, e in zip(got, expected, strict=True):
        if abs(g["score"] - e["score"]) > SCORE_TOLERANCE:
            raise SystemExit(f"FAIL {where}: {g} vs expected {e}")
    print(f"PASS {where}: top {TOP_K} {labels} as expected", flush=True)


def post_classify(url: str, timeout: float = 60.0, token: str = "") -> tuple[int, dict | None]:
    headers = {"Content-Type": "image/png", "Connection": "close"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"{url.rstrip('/')}/v1/classify?top_k={TOP_K}",
        data=test_png(),
        method="POST",
        headers=headers,
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, None


def classify(url: str, expected: list[dict]) -> None:
    status, body = post_classify(url)
    if status != 200 or not body:
        raise SystemExit(f"FAIL classify: {status} {body}")
    compare(body["predictions"][0], expected, f"POST {url}/v1/classify")


def grpc_classify(target: str, model: str, expected: list[dict], token: str = "") -> None:
    import grpc

    from service.grpc.generated import grpc_service_pb2 as pb
    from service.grpc.generated import grpc_service_pb2_grpc as pb_grpc

    tensor = pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(test_png())
    output = pb.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")
    output.parameters["classification"].int64_param = TOP_K
    request = pb.ModelInferRequest(model_name=model, inputs=[tensor], outputs=[output])
    with grpc.insecure_channel(target) as channel:
        metadata = [("authorization", f"Bearer {token}")] if token else None
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, timeout=60, metadata=metadata)
    out = response.outputs[0]
    if out.contents.bytes_contents:
        strings = list(out.contents.bytes_contents)
    else:  # raw: each element a 4-byte little-endian length, then its bytes
        raw, strings = response.raw_output_contents[0], []
        while raw:
            n = int.from_bytes(raw[:4], "little")
            strings.append(raw[4 : 4 + n])
            raw = raw[4 + n :]
    got = []
    for s in strings:
        score, _, label = s.decode().split(":", 2)
        got.append({"label": label, "score": float(score)})
    compare(got, expected, f"gRPC ModelInfer {target}")


def steady(url: str, stop: Path, report: Path, token: str) -> int:
    ok, failures = 0, []
    while not stop.exists():
        try:
            status, body = post_classify(url, timeout=30, token=token)
            if status == 200 and body:
                ok += 1
            else:
                failures.append(f"{time.strftime('%H:%M:%S')} HTTP {status}")
        except OSError as exc:
            failures.append(f"{time.strftime('%H:%M:%S')} {exc}")
        time.sleep(0.2)
    report.write_text(json.dumps({"ok": ok, "failures": failures}, indent=1))
    print(f"steady client: {ok} requests answered, {len(failures)} failed", flush=True)
    for f in failures[:10]:
        print(f"  {f}", flush=True)
    return 0 if ok and not failures else 1


def wheel_gaps(folder: Path, python: str) -> list[str]:
    import zipfile
    from email.parser import Parser

    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    env = default_environment()
    env.update(
        python_full_version=python,
        python_version=".".join(python.split(".")[:2]),
        implementation_version=python,
        extra="",
    )
    wheels = sorted(folder.glob("*.whl"))
    have = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheels}
    missing: set[str] = set()
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            metadata = Parser().parsestr(z.read(name).decode())
        for line in metadata.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):  # type: ignore[arg-type]
                continue
            if canonicalize_name(req.name) not in have:
                req.marker = None
                missing.add(str(req))
    return sorted(missing)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-weights")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("expect")
    p.add_argument("--weights", type=Path, required=True)
    for name in ("classify", "grpc"):
        p = sub.add_parser(name)
        p.add_argument("--expected", type=Path, required=True)
        p.add_argument("--url" if name == "classify" else "--target", required=True)
        if name == "grpc":
            p.add_argument("--model", default="resnet50")
            p.add_argument("--token", default="", help="bearer token sent as metadata")
    p = sub.add_parser("wheel-gaps")
    p.add_argument("--wheels", type=Path, required=True)
    p.add_argument("--python", required=True)
    p = sub.add_parser("steady")
    p.add_argument("--url", required=True)
    p.add_argument("--stop", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    p.add_argument("--token", default="", help="bearer token sent with every request")
    args = parser.parse_args()
    if args.command == "make-weights":
        make_weights(args.out)
    elif args.command == "expect":
        print(json.dumps(expect(args.weights)))
    elif args.command == "classify":
        classify(args.url, json.loads(args.expected.read_text()))
    elif args.command == "grpc":
        grpc_classify(
            args.target, args.model, json.loads(args.expected.read_text()), args.token
        )
    elif args.command == "wheel-gaps":
        print("\n".join(wheel_gaps(args.wheels, args.python)))
    elif args.command == "steady":
        return steady(args.url, args.stop, args.report, args.token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
