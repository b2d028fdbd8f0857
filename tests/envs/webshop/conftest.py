import pytest

from jerp_jax.envs import webshop


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  """A private cache: tests never read or write ~/.cache."""
  return str(tmp_path_factory.mktemp("webshop_cache"))


@pytest.fixture(scope="session")
def synthetic_config(cache_dir):
  c = webshop.get_config()
  c.cache_dir = cache_dir
  return c.to_dict()


@pytest.fixture(scope="session")
def real_config(shared_dir, cache_dir):
  c = webshop.get_config()
  c.data_dir = str(shared_dir / "webshop" / "data")
  c.cache_dir = cache_dir
  return c.to_dict()
