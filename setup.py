"""Package metadata comes from settings.ini (nbdev 2); no pkg_resources needed."""

from configparser import ConfigParser
from pathlib import Path
import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read(Path(__file__).parent / "settings.ini", encoding="utf-8")
c = cfg["DEFAULT"]
licenses = {"apache2": "Apache-2.0"}  # SPDX expression (license classifiers are deprecated)
statuses = [
    "1 - Planning",
    "2 - Pre-Alpha",
    "3 - Alpha",
    "4 - Beta",
    "5 - Production/Stable",
    "6 - Mature",
    "7 - Inactive",
]
readme = Path(__file__).parent / "README.md"
extras = {k: c.get(f"{k}_requirements", "").split() for k in ("assets", "bench", "triton", "serve")}

setuptools.setup(
    name=c["lib_name"],
    version=c["version"],
    description=c["description"],
    long_description=readme.read_text(encoding="utf-8") if readme.exists() else "",
    long_description_content_type="text/markdown",
    author=c["author"],
    author_email=c["author_email"],
    license=licenses[c["license"]],
    license_files=["LICENSE"],
    url=c["git_url"],
    keywords=c["keywords"].split(),
    classifiers=[
        "Development Status :: " + statuses[int(c["status"])],
        "Intended Audience :: " + c["audience"].title(),
        "Natural Language :: " + c["language"].title(),
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
    ],
    packages=setuptools.find_packages(include=[c["lib_path"], c["lib_path"] + ".*"]),
    include_package_data=True,
    python_requires=">=" + c["min_python"],
    install_requires=c.get("requirements", "").split(),
    extras_require={
        **extras,
        "dev": extras["assets"] + extras["bench"] + extras["serve"] + c.get("dev_requirements", "").split(),
    },
    entry_points={
        "console_scripts": c.get("console_scripts", "").split(),
        "nbdev": [f"{c['lib_path']}={c['lib_path']}._modidx:d"],
    },
    zip_safe=False,
)
