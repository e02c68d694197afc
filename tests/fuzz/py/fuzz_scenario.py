"""atheris target: sa-experiment's scenario parser (tools/sa-experiment/
scenario.py) on any text. A scenario is either accepted or refused with
ScenarioError; any other exception is a bug.

  pip install atheris pyyaml   # PyPI; the fuzzer is not needed by the tests
  cp -r tests/fuzz/py/corpus_scenario /tmp/c
  python3 tests/fuzz/py/fuzz_scenario.py -runs=200000 /tmp/c
"""
import os
import sys

import atheris

with atheris.instrument_imports():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "tools",
                                    "sa-experiment"))
    import scenario
    import yaml


def one(data):
    text = data.decode("utf-8", "replace")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return
    except RecursionError:  # PyYAML's own limit on nesting
        return
    try:
        scenario.parse(doc, "/tmp")
    except scenario.ScenarioError:
        pass


atheris.Setup(sys.argv, one)
atheris.Fuzz()
