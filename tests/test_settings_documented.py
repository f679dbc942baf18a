"""Every setting read from the environment is documented: in .env.example and in the README's
table (a setting no one can find is a setting no one sets)."""

import re

from tests.conftest import REPO

SETTINGS = (REPO / "tunixops" / "settings.py").read_text()
# envint("NAME", ...), os.getenv("NAME"), os.environ["NAME"], ...
READ = set(re.findall(r'(?:env\w*|getenv)\(\s*"([A-Z][A-Z0-9_]+)"', SETTINGS)) | set(
    re.findall(r'os\.environ\["([A-Z][A-Z0-9_]+)"\]', SETTINGS)
)


def test_the_settings_file_reads_the_variables_this_test_expects() -> None:
    assert {"SECRET_KEY", "TUNIX_RUN_VISIBILITY", "TUNIX_CSP", "TUNIX_API_READ_RATE"} <= READ


def test_every_variable_is_in_env_example() -> None:
    example = (REPO / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))
    assert READ - listed == set()


def test_every_variable_is_in_the_readme_table() -> None:
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", readme, re.MULTILINE))
    # Rows that document several flags at once name the others in their text.
    documented |= set(re.findall(r"`(TUNIX_[A-Z0-9_]+)`", readme))
    assert READ - documented == set()
