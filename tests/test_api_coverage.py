"""The PyTorch API eager covers: a committed list of the names we support (torch, Tensor methods, nn, F, init, Module,
optim, lr_scheduler, utils.data, autograd), each checked to exist in eager and in PyTorch, and the names the README
lists as not yet supported, each checked to be really missing (so the README stays true when one is added).

A name added to eager and to this list is covered from then on; a name removed from eager fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import eager

torch = pytest.importorskip("torch")
README = Path(__file__).resolve().parent.parent / "README.md"

SUPPORTED = {
    "torch": """
        Generator Tensor abs add all amax amin any arange argmax argmin argsort as_tensor autograd bitwise_and
        bitwise_not bitwise_or bitwise_xor bmm bool cat ceil chunk clamp clone concat cond cos cuda cumprod
        cumsum detach diagonal div divide double einsum empty enable_grad eq erf erfc exp eye flatten flip
        fliplr flipud float float32 float64 floor floor_divide from_numpy full full_like gather ge gt index_add
        index_select int32 int64 int8 is_grad_enabled le linspace load log log_softmax logical_and logical_not
        logical_or logical_xor logsumexp long lt manual_seed matmul max maximum mean min minimum mm mul ne neg
        nn no_grad norm ones ones_like optim outer permute pow rand rand_like randint randn randn_like randperm
        relu remainder reshape roll round rsqrt save scatter scatter_add set_grad_enabled sigmoid sign sin
        softmax sort split sqrt squeeze stack std sub sum tanh tensor topk transpose tril triu trunc unbind
        unsqueeze utils var where while_loop zeros zeros_like
    """,
    "Tensor": """
        T abs abs_ add add_ all amax amin any argmax argmin argsort backward bitwise_and bitwise_and_
        bitwise_not bitwise_not_ bitwise_or bitwise_or_ bitwise_xor bitwise_xor_ bmm bool ceil ceil_ chunk clamp
        clamp_ clip clone contiguous copy_ cos cos_ cpu cuda cumprod cumprod_ cumsum cumsum_ data detach detach_
        device diagonal dim div div_ divide double dtype eq erf erf_ erfc erfc_ exp exp_ expand expand_as fill_
        flatten flip fliplr flipud float floor floor_ floor_divide floor_divide_ gather ge grad grad_fn gt
        index_add index_add_ index_select int is_cuda is_floating_point is_leaf item le log log_ log_softmax
        logical_and logical_not logical_or logical_xor logsumexp long lt mT masked_fill masked_fill_ matmul max
        maximum mean min minimum mm mul mul_ narrow ndim ne neg neg_ new_empty new_full new_ones new_tensor
        new_zeros norm normal_ numel numpy outer permute pow reciprocal register_hook relu remainder remainder_
        repeat requires_grad requires_grad_ reshape reshape_as retain_grad roll round round_ rsqrt scatter
        scatter_ scatter_add scatter_add_ select shape sigmoid sigmoid_ sign sign_ sin sin_ size softmax sort
        split sqrt sqrt_ square squeeze std sub sub_ sum t tanh tanh_ to tolist topk transpose tril tril_ triu
        triu_ true_divide trunc trunc_ type_as unbind unfold uniform_ unsqueeze var view view_as where zero_
    """,
    "nn": """
        AdaptiveAvgPool1d AdaptiveAvgPool2d AvgPool1d AvgPool2d BCELoss BCEWithLogitsLoss BatchNorm1d
        BatchNorm2d Conv1d Conv2d ConvTranspose1d ConvTranspose2d CrossEntropyLoss Dropout Embedding Flatten
        GELU Identity LayerNorm LeakyReLU Linear LogSoftmax MSELoss MaxPool1d MaxPool2d Module ModuleDict
        ModuleList NLLLoss Parameter ReLU Sequential SiLU Sigmoid Softmax Tanh functional init utils
    """,
    "nn.functional": """
        adaptive_avg_pool1d adaptive_avg_pool2d avg_pool1d avg_pool2d batch_norm binary_cross_entropy
        binary_cross_entropy_with_logits conv1d conv2d conv_transpose1d conv_transpose2d cross_entropy dropout
        embedding gelu layer_norm leaky_relu linear log_softmax logsigmoid max_pool1d max_pool2d mse_loss
        nll_loss one_hot pad relu sigmoid silu softmax softplus tanh
    """,
    "nn.init": """
        calculate_gain constant_ kaiming_normal_ kaiming_uniform_ normal_ ones_ uniform_ xavier_normal_
        xavier_uniform_ zeros_
    """,
    "nn.utils": """
        clip_grad_norm_ clip_grad_value_
    """,
    "nn.Module": """
        add_module apply buffers children cpu cuda double eval extra_repr float forward get_submodule
        load_state_dict modules named_buffers named_children named_modules named_parameters parameters
        register_buffer register_module register_parameter requires_grad_ state_dict to train zero_grad
    """,
    "optim": """
        Adam AdamW SGD lr_scheduler
    """,
    "optim.Optimizer": """
        add_param_group load_state_dict state_dict step zero_grad
    """,
    "optim.lr_scheduler": """
        CosineAnnealingLR ExponentialLR LRScheduler LambdaLR MultiStepLR ReduceLROnPlateau StepLR
    """,
    "utils.data": """
        BatchSampler ConcatDataset DataLoader Dataset RandomSampler SequentialSampler Subset TensorDataset
        default_collate random_split
    """,
    "autograd": """
        Function backward detect_anomaly enable_grad functional grad gradcheck no_grad set_grad_enabled
    """,
}

# the list of names programs need that eager does not have yet; the README names every one of them
NOT_YET = """
    torch.float16 torch.bfloat16 Tensor.half Tensor.bfloat16 torch.device torch.inference_mode torch.autocast
    torch.isnan torch.isfinite torch.allclose torch.prod torch.nonzero nn.LSTM nn.GRU nn.RNN nn.MultiheadAttention
    nn.TransformerEncoderLayer nn.GroupNorm nn.ParameterList nn.ParameterDict nn.L1Loss nn.HuberLoss nn.ELU
    nn.Softplus nn.functional.scaled_dot_product_attention nn.functional.normalize nn.functional.cosine_similarity
    nn.functional.smooth_l1_loss nn.functional.kl_div nn.functional.group_norm nn.Module.register_forward_hook
    nn.Module.register_forward_pre_hook nn.Module.register_full_backward_hook optim.RMSprop optim.Adagrad optim.LBFGS
    optim.lr_scheduler.OneCycleLR utils.checkpoint
""".split()


def _resolve(root, dotted: str):
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _ours(namespace: str):
    return eager if namespace == "torch" else eager.Tensor if namespace == "Tensor" else _resolve(eager, namespace)


def _theirs(namespace: str):
    return torch if namespace == "torch" else torch.Tensor if namespace == "Tensor" else _resolve(torch, namespace)


def _names(namespace: str) -> list[str]:
    return SUPPORTED[namespace].split()


@pytest.mark.parametrize("namespace", SUPPORTED)
def test_every_listed_name_exists_in_eager(namespace):
    ours = _ours(namespace)
    missing = [n for n in _names(namespace) if not hasattr(ours, n)]
    assert not missing, f"listed as supported but missing from eager's {namespace}: {missing}"


@pytest.mark.parametrize("namespace", SUPPORTED)
def test_every_listed_name_is_a_pytorch_name(namespace):
    theirs = _theirs(namespace)
    assert [n for n in _names(namespace) if not hasattr(theirs, n)] == []


@pytest.mark.parametrize("namespace", SUPPORTED)
def test_the_list_is_sorted_without_repeats(namespace):
    assert _names(namespace) == sorted(set(_names(namespace)))


@pytest.mark.parametrize("name", NOT_YET)
def test_names_the_readme_says_are_missing_are_missing_in_eager_and_present_in_torch(name):
    namespace, _, attr = name.rpartition(".")
    assert hasattr(_theirs(namespace), attr), f"{name} is not a PyTorch name"
    assert not hasattr(_ours(namespace) if namespace != "torch" else eager, attr), (
        f"{name} exists in eager now: add it to SUPPORTED and take it out of NOT_YET and the README's list")


def test_the_readme_states_the_coverage_and_every_missing_name():
    text = README.read_text()
    total = sum(len(_names(ns)) for ns in SUPPORTED)
    match = re.search(r"test_api_coverage\.py`?\) lists the (\d+) PyTorch names", text)
    assert match and int(match.group(1)) == total, f"the README should say the list has {total} names"
    assert [n for n in NOT_YET if f"`{n}`" not in text] == []
