"""eXtremail: a multi-domain SMTP/POP3 mail server with a management port."""

from pathlib import Path

from setuptools import setup

from extremail import VERSION

setup(
    name="extremail",
    version=VERSION,
    description="Multi-domain Unix mail server: SMTP, POP3, remote management (eXtremail 1.1.10 re-created)",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Freeware (see README)",
    python_requires=">=3.11",
    packages=["extremail", "extremail.net", "extremail.remote", "extremail.smtp",
              "extremail.queue", "extremail.data"],
    package_dir={"extremail.data": "data"},
    package_data={"extremail.data": ["dsn_fail", "dsn_dela"]},
    install_requires=[
        "dnspython>=2.4",       # MX/A/AAAA lookups with TTLs (RFC 5321 5.1)
        "python-daemon>=3.0",   # detaching (PEP 3143) and TimeoutPIDLockFile for FILE_PID
        "lockfile>=0.12",       # the PID lock file under python-daemon's TimeoutPIDLockFile
    ],
    entry_points={"console_scripts": [
        "smtpd=extremail.cli:main_smtpd",
        "adduser=extremail.cli:main_adduser",
        "adddomain=extremail.cli:main_adddomain",
    ]},
)
