import pathlib

import pytest

# CI clones the project with the workplace's shared data folder beside it.
SHARED = pathlib.Path(__file__).resolve().parents[2].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
  if not SHARED.is_dir():
    pytest.fail(f"{SHARED} is missing: the tests need the shared data folder beside the repository")
  return SHARED
