from tcap import _entry

raise SystemExit(_entry())
