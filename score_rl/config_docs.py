"""``python -m score_rl.config_docs [--check]``: docs/config.md's reference table (score_rl.config.reference)."""

from score_rl.config.reference import BEGIN, DEFAULT_PATH, END, extract_reference, main, with_reference  # noqa: F401

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
