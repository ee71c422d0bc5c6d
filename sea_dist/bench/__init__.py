"""``sea-dist bench``: the benchmark harness.

    scenario.py   YAML scenarios (benchmarks/scenarios/*.yaml) -> validated pydantic models
    data.py       a scenario's data: shared MMRec sets, stand-in features, generated catalogues
    stats.py      median / spread over repeats, scaling efficiency, time-to-accuracy
    measure.py    sampler and evaluation throughput, machine description
    runner.py     training scenarios: throughput, strong / weak scaling, time-to-accuracy
    stages.py     stage scenarios (the million-item run): each stage in its own process
    report.py     results.json, results.md and PNG plots
"""
