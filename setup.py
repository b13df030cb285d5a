"""Maps the folders operator/ and trainer/ to the import names exfm_operator and exfm_trainer."""

from setuptools import find_packages, setup


def _packages(folder: str, name: str) -> list[str]:
    return [name] + [f"{name}.{sub}" for sub in find_packages(folder)]


setup(packages=_packages("operator", "exfm_operator") + _packages("trainer", "exfm_trainer"))
