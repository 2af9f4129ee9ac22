import pytest


@pytest.fixture(scope="session")
def reference(tiny_model, tmp_path_factory):
    """The undisturbed run every fault test's outputs must equal: (run directory, outputs)."""
    from tests.faults import harness

    root = tmp_path_factory.mktemp("reference")
    harness.run(root)
    harness.check_whole(root / "run")
    return root / "run", harness.outputs(root / "run")
