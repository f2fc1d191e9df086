# Provenance: every rule's `provenance` param is the digest of the code and settings of its own stage and of
# every stage upstream of it (stego_steps/provenance.py says what counts as code). Snakemake re-runs a job
# whose param changed, so an edit of a compute function or a setting re-runs its stage and everything
# downstream, in one invocation, even where an intermediate was lost. Each job ends by recording the digest
# under .provenance/; an existing output whose record differs from the expected digest, or whose size is not
# the one its job wrote, is re-made (forced) with everything after it, which also holds after `rm -rf .snakemake`.
from stego_steps import provenance as stego_provenance
from stego_steps.steps import DecidingSteps

# `code_changes: keep` keeps artifacts whose settings match but whose code differs (they are listed).
KEEP_CODE = config["code_changes"] == "keep"


# Step name → (stage module, settings) of everything that decides the outputs of a rule's job.
deciding_steps = DecidingSteps(IN)


_EXPECTED = {}


def _expected(rule, wildcards):
    """The provenance a job of `rule` makes now; computed once per job (its input check and its param ask)."""
    key = (rule, tuple(sorted(wildcards.items())))
    if key not in _EXPECTED:
        _EXPECTED[key] = {
            "rule": rule,
            "wildcards": dict(wildcards.items()),
            **stego_provenance.chain(deciding_steps(rule, wildcards)),
        }
    return _EXPECTED[key]


def _outputs(rule, wildcards):
    return [str(path) for path in workflow.get_rule(rule).expand_output(wildcards)[0]]


def provenance(rule):
    """Params function → the provenance of a job of `rule` (JSON): its rule, wildcards, chain digest and steps.

    With `code_changes: keep`, an output whose record differs from it only in code keeps its recorded value,
    so that Snakemake does not re-run it either."""

    def get(wildcards):
        expected = _expected(rule, wildcards)
        if KEEP_CODE:
            for path in _outputs(rule, wildcards):
                recorded = stego_provenance.read_record(path)
                if recorded and stego_provenance.only_code_differs(recorded, expected):
                    expected = {key: recorded[key] for key in expected}
                    break
        return json.dumps(expected, sort_keys=True)

    return get


def provenance_check(rule):
    """Input function (adds no input) → removes the job's outputs that another chain made, before Snakemake
    decides what to run."""

    def check(wildcards):
        _check_outputs(rule, wildcards, _expected(rule, wildcards))
        return []

    return check


_REPORTED = set()


def _check_outputs(rule, wildcards, expected):
    """Have Snakemake re-make this job's outputs whose record says another chain made them, or whose size is not
    the one their job wrote (truncated or replaced).

    Called while the DAG is built, before Snakemake decides which jobs run: such an output is added to the DAG's
    forced files (a dry run lists the job as forced; a real run re-makes it and what follows). Outputs without
    a record (made before records existed, or by hand) are left to Snakemake's own checks."""
    for path in _outputs(rule, wildcards):
        recorded = stego_provenance.read_record(path)
        if recorded is None or not os.path.exists(path) or path in _REPORTED:
            continue
        size = stego_provenance.size(path)
        damaged = recorded.get("bytes") not in (None, size)
        if recorded["digest"] == expected["digest"] and not damaged:
            continue
        _REPORTED.add(path)
        if damaged:
            why = f"is damaged ({size} bytes where its job wrote {recorded['bytes']}: truncated or replaced)"
        else:
            why = f"was made by other code or settings ({stego_provenance.summary(stego_provenance.differences(recorded, expected))})"
            if KEEP_CODE and stego_provenance.only_code_differs(recorded, expected):
                logger.warning(f"{path} {why}: kept (`code_changes: keep`)")
                continue
        logger.warning(f"{path} {why}: re-made")
        workflow.dag.forcefiles.add(path)
