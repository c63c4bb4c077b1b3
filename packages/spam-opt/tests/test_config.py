"""SPAMConfig / StableSPAMConfig: the papers' defaults (equal to the constructors', stated nowhere
else in the package), every field reaches the optimizer, `build` equals a hand construction step by
step on a tiny HF Llama, sparse momentum goes to the attention / MLP matrices, bad values are
refused with the field named."""

import ast
import inspect
from pathlib import Path

import pytest
import torch

from layerwise_core import ConfigError, decay_param_groups, tiny_llama, tiny_qwen2
from spam_opt import SPAM, SPAMConfig, StableSPAM, StableSPAMConfig, sparse_momentum_groups

PACKAGE = Path(__file__).resolve().parents[1]
PAIRS = [(SPAMConfig, SPAM), (StableSPAMConfig, StableSPAM)]
# fields that are not constructor arguments: SPAM's density is a param-group option
NOT_ARGUMENTS = {SPAMConfig: {"density"}, StableSPAMConfig: set()}


@pytest.mark.parametrize(("config_cls", "optimizer_cls"), PAIRS)
def test_defaults_equal_the_constructor_defaults(config_cls, optimizer_cls):
    params = inspect.signature(optimizer_cls.__init__).parameters
    fields = config_cls.model_fields
    # every argument of the constructor is a field, and every field but density an argument
    assert set(params) - {"self", "params"} == set(fields) - NOT_ARGUMENTS[config_cls]
    for name in set(fields) - NOT_ARGUMENTS[config_cls]:
        assert fields[name].default == params[name].default, name
    assert SPAMConfig().density == 1.0  # dense, as SPAM's param groups are unless they say so


def test_the_papers_values():
    # specs/spam-opt.md: SPAM lr 1e-3, betas (0.9, 0.999), eps 1e-6, wd 0, N = 150, theta = 5000,
    # dT = 500, A = 20; Stable-SPAM lr 1e-3, eps 1e-8, wd 0, gammas 0.7 / 0.9 / 0.999, no total_T,
    # eta_min 0.5, update_proj_gap 1000
    spam, stable = SPAMConfig(), StableSPAMConfig()
    assert (spam.lr, spam.betas, spam.eps, spam.weight_decay) == (1e-3, (0.9, 0.999), 1e-6, 0.0)
    assert (spam.warmup_steps, spam.threshold, spam.reset_interval, spam.clip_delay) == (
        150,
        5000.0,
        500,
        20,
    )
    assert (stable.lr, stable.betas, stable.eps, stable.weight_decay) == (
        1e-3,
        (0.9, 0.999),
        1e-8,
        0.0,
    )
    assert (stable.gamma1, stable.gamma2, stable.gamma3) == (0.7, 0.9, 0.999)
    assert (stable.total_steps, stable.eta_min, stable.reset_interval) == (None, 0.5, 1000)
    assert not spam.reference_quirks and not stable.reference_quirks


def _literal_defaults(tree: ast.AST, names: set[str]) -> list[tuple[str, str]]:
    """(owner, name) of every literal default given to a hyper-parameter name: function
    parameters (`def f(eps=1e-6)`) and class-level fields (`eps: float = 1e-6`)."""

    def literal(node) -> bool:
        if isinstance(node, ast.Call) and node.args:  # Field(1e-6, ...)
            node = node.args[0]
        try:
            ast.literal_eval(node)
        except ValueError:
            return False
        return not (isinstance(node, ast.Constant) and node.value is None)

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            found += [(node.name, a.arg) for a, d in pairs if a.arg in names and literal(d)]
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if (
                    isinstance(item, ast.AnnAssign)
                    and isinstance(item.target, ast.Name)
                    and item.target.id in names
                    and item.value is not None
                    and literal(item.value)
                ):
                    found.append((node.name, item.target.id))
    return found


def test_no_second_copy_of_a_default():
    # The papers' values live in the configs; the constructors keep theirs (tied by the test
    # above). Nothing else in the package (functional steps, helpers, benchmark ports) may default
    # a hyper-parameter: it would be a third copy that nothing keeps equal.
    names = set(SPAMConfig.model_fields) | set(StableSPAMConfig.model_fields)
    names -= {"foreach", "fused"}  # execution paths, not hyper-parameters: None = automatic
    files = sorted((PACKAGE / "src").rglob("*.py")) + sorted((PACKAGE / "benchmarks").glob("*.py"))
    found = []
    for path in files:
        found += [
            (path.name, *hit) for hit in _literal_defaults(ast.parse(path.read_text()), names)
        ]
    allowed = {("spam.py", "__init__"), ("stable_spam.py", "__init__")}
    allowed |= {("config.py", "SPAMConfig"), ("config.py", "StableSPAMConfig")}
    assert {(f, owner) for f, owner, _ in found} <= allowed, found
    # ... and each of those four places states each of its hyper-parameters once
    counts = {}
    for f, owner, name in found:
        counts[(f, owner, name)] = counts.get((f, owner, name), 0) + 1
    assert set(counts.values()) == {1}
    # the README's table shows the configs' own repr, so it cannot drift either
    readme = (PACKAGE / "README.md").read_text()
    for config_cls in (SPAMConfig, StableSPAMConfig):
        assert repr(config_cls()) in readme, f"README: update the row of {config_cls.__name__}"


def test_the_ast_scan_sees_a_copy():
    # the scan of the previous test, on code that restates defaults in both ways it looks for
    code = (
        "def spam(p, *, eps=1e-6, lr=None): ...\nclass C:\n    reset_interval: int = Field(500)\n"
    )
    found = _literal_defaults(ast.parse(code), {"eps", "lr", "reset_interval"})
    assert sorted(found) == [("C", "reset_interval"), ("spam", "eps")]  # lr=None: no value


NON_DEFAULT = {
    SPAMConfig: dict(
        lr=3e-3,
        betas=(0.8, 0.95),
        eps=1e-7,
        weight_decay=0.05,
        warmup_steps=7,
        threshold=99.0,
        reset_interval=11,
        clip_delay=3,
        density=0.5,
        reference_quirks=True,
        foreach=False,
        fused=False,
    ),
    StableSPAMConfig: dict(
        lr=3e-3,
        betas=(0.8, 0.95),
        eps=1e-7,
        weight_decay=0.05,
        gamma1=-1.0,
        gamma2=0.95,
        gamma3=0.99,
        total_steps=77,
        eta_min=0.25,
        reset_interval=11,
        reference_quirks=True,
        foreach=False,
        fused=True,
    ),
}


@pytest.mark.parametrize("config_cls", [SPAMConfig, StableSPAMConfig])
def test_every_field_reaches_the_optimizer(config_cls):
    values = NON_DEFAULT[config_cls]
    assert set(values) == set(config_cls.model_fields)
    cfg = config_cls(**values)
    for name, value in values.items():
        assert getattr(config_cls(), name) != value, f"{name}: pick a value other than the default"
    model = tiny_llama()
    opt = cfg.build(decay_param_groups(model, 0.1), total_steps=1000)
    for name, value in values.items():
        if name == "density":
            assert {g["density"] for g in opt.param_groups} == {0.5, 1.0}
        else:
            assert opt.defaults[name] == value, name  # total_steps: the field wins over 1000


def test_stable_spam_total_steps_is_the_runs_length_unless_set():
    params = [torch.nn.Parameter(torch.ones(2))]
    assert StableSPAMConfig().build(params, total_steps=300).defaults["total_steps"] == 300
    assert (
        StableSPAMConfig(total_steps=20).build(params, total_steps=300).defaults["total_steps"]
        == 20
    )
    assert StableSPAMConfig().build(params).defaults["total_steps"] is None  # s = 1 throughout
    assert SPAMConfig().build(params, total_steps=300).defaults["reset_interval"] == 500


def _train(model, opt, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    trajectory = []
    for step in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=gen)
        loss = model(input_ids=ids, labels=ids).loss * (50.0 if step == 3 else 1.0)  # a spike
        loss.backward()
        opt.step()
        opt.zero_grad()
        trajectory.append([p.detach().clone() for p in model.parameters()])
    return trajectory


def _hand_groups(model, weight_decay, density):
    """SPAM's param groups written out: attention / MLP matrices with density, then the other
    matrices, then the vectors without decay."""
    named = dict(model.named_parameters())
    sparse = [n for n, p in named.items() if p.dim() == 2 and (".self_attn." in n or ".mlp." in n)]
    other = [n for n, p in named.items() if p.dim() == 2 and n not in sparse]
    vectors = [n for n, p in named.items() if p.dim() == 1]
    groups = [
        {"params": [named[n] for n in sparse], "weight_decay": weight_decay, "density": density},
        {"params": [named[n] for n in other], "weight_decay": weight_decay},
        {"params": [named[n] for n in vectors], "weight_decay": 0.0},
    ]
    return groups


STEPS = 8


@pytest.mark.parametrize("reference_quirks", [False, True], ids=["paper", "quirks"])
def test_spam_build_equals_hand_construction(reference_quirks):
    hyper = dict(lr=3e-3, warmup_steps=2, reset_interval=4, clip_delay=2, threshold=10.0)
    hyper.update(reference_quirks=reference_quirks)
    built_model, hand_model = tiny_llama(), tiny_llama()
    torch.manual_seed(5)  # the sparse-momentum masks, drawn at construction and every reset
    built = SPAMConfig(density=0.5, **hyper).build(decay_param_groups(built_model, 0.1))
    built_run = _train(built_model, built, STEPS)
    torch.manual_seed(5)
    hand = SPAM(_hand_groups(hand_model, 0.1, 0.5), **hyper)
    hand_run = _train(hand_model, hand, STEPS)
    for step, (got, want) in enumerate(zip(built_run, hand_run)):
        assert all(torch.equal(a, b) for a, b in zip(got, want)), f"step {step}"
    assert not torch.equal(built_run[-1][0], next(tiny_llama().parameters()))  # it trained


@pytest.mark.parametrize(("field", "argument", "used"), [(None, 6, 6), (3, 6, 3)])
def test_stable_spam_build_equals_hand_construction(field, argument, used):
    hyper = dict(lr=3e-3, reset_interval=4, gamma3=0.99)
    built_model, hand_model = tiny_llama(), tiny_llama()
    cfg = StableSPAMConfig(total_steps=field, **hyper)
    built = cfg.build(decay_param_groups(built_model, 0.1), total_steps=argument)
    hand = StableSPAM(decay_param_groups(hand_model, 0.1), total_steps=used, **hyper)
    built_run, hand_run = _train(built_model, built, STEPS), _train(hand_model, hand, STEPS)
    for step, (got, want) in enumerate(zip(built_run, hand_run)):
        assert all(torch.equal(a, b) for a, b in zip(got, want)), f"step {step}"


def _is_attention_or_mlp_matrix(name: str, param: torch.Tensor) -> bool:
    # written without the regex: a module path component named self_attn or mlp, and a matrix
    return param.dim() >= 2 and bool({"self_attn", "mlp"} & set(name.split(".")[:-1]))


@pytest.mark.parametrize("factory", [tiny_llama, tiny_qwen2])  # qwen2: q/k/v biases (vectors)
@pytest.mark.parametrize("weight_decay", [0.1, 0.0])
def test_density_split_puts_each_parameter_in_its_group(factory, weight_decay):
    model = factory()
    named = dict(model.named_parameters())
    groups = decay_param_groups(model, weight_decay)
    groups[0]["lr"] = 5e-4  # a group's own options travel with its parts
    split = sparse_momentum_groups(groups, 0.25)
    # each parameter exactly once, with its name
    assert sorted(n for g in split for n in g["param_names"]) == sorted(named)
    for group in split:
        assert [named[n] for n in group["param_names"]] == group["params"]
        sparse = [_is_attention_or_mlp_matrix(n, named[n]) for n in group["param_names"]]
        if group.get("density") == 0.25:
            assert all(sparse)
        else:
            assert "density" not in group and not any(sparse)
        matrices = all(named[n].dim() >= 2 for n in group["param_names"])
        assert group["weight_decay"] == (weight_decay if matrices else 0.0)
    # decay group -> its attention / MLP part (first), then the rest (embeddings, lm_head)
    assert [g.get("density") for g in split] == [0.25, None, None]
    assert split[0]["lr"] == split[1]["lr"] == 5e-4 and "lr" not in split[2]
    sparse_names = {n for n, p in named.items() if _is_attention_or_mlp_matrix(n, p)}
    assert set(split[0]["param_names"]) == sparse_names
    layers = model.config.num_hidden_layers
    assert len(sparse_names) == 7 * layers  # q, k, v, o, gate, up, down per layer
    # the input groups are left as they were
    assert "density" not in groups[0] and len(groups) == 2


def test_density_split_needs_names():
    p = torch.nn.Parameter(torch.ones(3, 3))
    assert sparse_momentum_groups([{"params": [p]}], 1.0) == [{"params": [p]}]  # nothing to pick
    with pytest.raises(ValueError, match="no 'param_names'.*decay_param_groups"):
        sparse_momentum_groups([{"params": [p]}], 0.5)
    with pytest.raises(ValueError, match="not bare parameters"):
        SPAMConfig(density=0.5).build([p])
    assert SPAMConfig().build([p]).param_groups[0]["density"] == 1.0  # dense: bare params are fine


@pytest.mark.parametrize(
    ("config_cls", "values", "message"),
    [
        (SPAMConfig, dict(lr=0.0), "field 'lr': Input should be greater than 0"),
        (SPAMConfig, dict(lr=float("nan")), "field 'lr': Input should be a finite number"),
        (SPAMConfig, dict(betas=[0.9, 1.0]), "field 'betas': .* each be in \\[0, 1\\)"),
        (SPAMConfig, dict(eps=-1e-8), "field 'eps': Input should be greater than 0"),
        (SPAMConfig, dict(weight_decay=-0.1), "field 'weight_decay'"),
        (SPAMConfig, dict(warmup_steps=-1), "field 'warmup_steps'"),
        (SPAMConfig, dict(threshold=float("inf")), "field 'threshold'"),
        (SPAMConfig, dict(density=0.0), "field 'density'"),
        (SPAMConfig, dict(density=1.5), "field 'density'"),
        (SPAMConfig, dict(clip_delay=1), "clip_delay: 1 \\(>= 2 with threshold > 0"),
        (SPAMConfig, dict(foreach=True, fused=True), "cannot both be True"),
        (SPAMConfig, dict(clip_dealy=3), "unknown field 'clip_dealy' \\(did you mean 'clip_delay'"),
        (StableSPAMConfig, dict(lr=-1.0), "field 'lr'"),
        (StableSPAMConfig, dict(gamma1=1.5), "field 'gamma1': Invalid gamma1: 1.5"),
        (StableSPAMConfig, dict(gamma2=1.0), "field 'gamma2'"),
        (StableSPAMConfig, dict(gamma3=-0.1), "field 'gamma3'"),
        (StableSPAMConfig, dict(total_steps=0), "field 'total_steps'"),
        (StableSPAMConfig, dict(eta_min=1.5), "field 'eta_min'"),
        (StableSPAMConfig, dict(reset_interval=-5), "field 'reset_interval'"),
        (StableSPAMConfig, dict(density=0.5), "unknown field 'density'"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(config_cls, values, message):
    with pytest.raises(ConfigError, match=message):
        config_cls.from_dict(values)


def test_the_config_accepts_what_the_constructor_accepts():
    # values at the edges of the ranges: the config takes them and the optimizer too
    params = [torch.nn.Parameter(torch.ones(2))]
    SPAMConfig(threshold=0.0, clip_delay=0, reset_interval=0, density=1.0).build(params)
    StableSPAMConfig(gamma1=-1, gamma2=0.0, eta_min=1.0, reset_interval=0).build(params)
    cfg = SPAMConfig()
    with pytest.raises(ValueError, match="clip_delay"):
        cfg.clip_delay = 1  # checked on assignment too


@pytest.mark.parametrize("config_cls", [SPAMConfig, StableSPAMConfig])
def test_yaml_round_trip(config_cls, tmp_path):
    cfg = config_cls(**NON_DEFAULT[config_cls])
    cfg.to_yaml(tmp_path / "optimizer.yaml")
    assert config_cls.from_yaml(tmp_path / "optimizer.yaml") == cfg
    assert config_cls.from_dict({}, ["lr=2e-4"]).lr == 2e-4
