"""atheris target: sa-sim's reading of sa-load's records for the calibration's
EOT hazard (chain_lengths in sim/sa-sim) on any bytes. Lines that are not
sa-load records are counted and skipped; any exception is a bug, and the
figures are never negative.

  pip install atheris   # PyPI; the fuzzer is not needed by the tests
  mkdir -p /tmp/cp && printf '%s\\n' '{"status": "OK", "result": {"chains": [{"finish": "eot", "tokens": [1, 2]}]}}' >/tmp/cp/a
  /usr/bin/python3 tests/fuzz/py/fuzz_chain_lengths.py -runs=200000 /tmp/cp
"""
import importlib.machinery
import importlib.util
import os
import sys
import tempfile

import atheris

SIM = os.path.join(os.path.dirname(__file__), "..", "..", "..", "sim")
with atheris.instrument_imports():
    loader = importlib.machinery.SourceFileLoader("sasim", os.path.join(SIM, "sa-sim"))
    sasim = importlib.util.module_from_spec(importlib.util.spec_from_loader("sasim", loader))
    loader.exec_module(sasim)

PATH = os.path.join(tempfile.mkdtemp(), "load.jsonl")
sasim.say = lambda msg: None  # the count of skipped lines, once per input


def one(data):
    with open(PATH, "wb") as f:
        f.write(data)
    got = sasim.chain_lengths(PATH)
    assert got["chains_eot"] >= 0 and got["chain_tokens"] >= 0, got


atheris.Setup(sys.argv, one)
atheris.Fuzz()
