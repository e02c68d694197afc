"""atheris target: sa-sim's prediction files (sim/predict.py check()) on any
text. A file is either accepted or refused with ValueError; any other
exception is a bug.

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
    import yaml


def one(data):
    text = data.decode("utf-8", "replace")
    try:
        doc = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        return
    try:
        predict.check(doc)
    except ValueError:
        pass


atheris.Setup(sys.argv, one)
atheris.Fuzz()
