import pytest

# the shared helpers assert too (a server that did not start, a create that was refused): let
# pytest explain their failures as it does the tests'
pytest.register_assert_rewrite("tests.support")
