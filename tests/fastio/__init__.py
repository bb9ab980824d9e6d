"""The hot path (router._fastio) and its pure-Python twin (tests/helpers/reference_log.py), same tests.

CI runs this whole folder under AddressSanitizer (`make asan`)."""
