"""The benchmark of issue 7: eXtremail beside Postfix, aiosmtpd and Dovecot (``bench/run``)."""
