"""``python -m extremail ...`` is ``smtpd ...``."""

from .cli import main_smtpd

main_smtpd()
