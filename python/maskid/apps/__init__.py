"""The applications built on the pipeline: `cli` (the `maskid` and `recognize` commands),
`camera` (the live loop), `demo`, `evaluate` (`maskid eval`); `draw` and `tracker` serve them."""
