"""eXtremail: a multi-domain SMTP, POP3 and IMAP4 mail server (a re-creation of eXtremail 1.1.10)."""

VERSION = "1.2.0"
