"""atheris target: sa-sim's prediction files (sim/predict.py check()) on any
text. A file is either accepted or refused with ValueError; any other
exception is a bug. An accepted file's requests and step costs are built
too (what the simulation then does with them).

  pip install atheris pyyaml   # PyPI; the fuzzer is not needed by the tests
  mkdir -p /tmp/cp && cp sim/predict.yaml /tmp/cp/
  python3 tests/fuzz/py/fuzz_predict.py -runs=200000 /tmp/cp
"""
import os
import sys

import atheris

with atheris.instrument_imports():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "sim"))
    import predict
    import simcore
    import yaml

CPU = {"stage": {"per_step": 6e-4}}
COORD = {"per_step": 8e-5, "per_row": 5e-6}


def one(data):
    text = data.decode("utf-8", "replace")
    try:
        doc = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        return
    try:
        predict.check(doc)
    except ValueError:
        return
    cal = predict.calibration(doc, CPU, COORD)
    cost = predict.gpu.GpuCost(cal)
    for n in doc["chains"]:
        simcore.Req(0, 0.0, predict.item(doc, n), 1)
    for p in doc["stages"]:
        cost.stage(64 // p, doc["max_batch"], 1000, 1, True, True)
        cost.kv_blocks(64 // p, True, True, 16)


atheris.Setup(sys.argv, one)
atheris.Fuzz()
