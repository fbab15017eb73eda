"""A wide zoo: tiny random-init configurations of the architectures people fine-tune on edge boxes.

Hugging Face models (text encoders and decoders, audio and vision), configured as users load them (the library's
default attention: SDPA for most families; ``*_eager`` factories give the eager variants), and plain PyTorch ones,
a few thousand to a few hundred thousand parameters each, so one exports and trains in seconds. Every factory is
seeded and gives the model a *sane* initialization (:func:`sane_init`): with Hugging Face's std-0.02 defaults and
BatchNorm scales near zero, pooled features of a random deep net collapse towards zero and "loss falls" would test
nothing.

``WIDE`` maps a family id to (factory name, export args); ``tests/export/test_zoo_wide.py`` exports and trains every
one.
"""

from __future__ import annotations

import torch
import torch.nn as nn

TEXT = ["--input", "input_ids:int64:1,12:1-96", "--input", "attention_mask:int64:1,12:1-2"]
IMAGE = ["--input", "pixel_values:float32:1,3,32,32"]
LABELS = ["--num-classes", "3"]


def sane_init(model: nn.Module) -> nn.Module:
    """Reset every standard layer to PyTorch's default initialization (Kaiming-uniform weights, unit norm scales)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.LayerNorm, nn.GroupNorm,
                          nn.BatchNorm1d, nn.BatchNorm2d)):
            m.reset_parameters()
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):  # non-trivial running statistics
            with torch.no_grad():
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.8, 1.25)
        if type(m).__name__.endswith("RMSNorm") and hasattr(m, "weight"):
            with torch.no_grad():
                m.weight.fill_(1.0)
    return model.eval()


def _hf(config_cls: str, model_cls: str, attn: str | None = None, **config):  # noqa: ANN202
    """A Hugging Face model configured as a user loads it: the library's default attention (SDPA for most
    families) unless ``attn`` names another implementation."""
    import transformers

    torch.manual_seed(0)
    cfg = getattr(transformers, config_cls)(**config)
    if attn is not None:
        cfg._attn_implementation = attn
    return sane_init(getattr(transformers, model_cls)(cfg))


def _eager(factory):  # noqa: ANN001, ANN202
    """``factory`` with eager (matmul + softmax) attention: the other path Hugging Face models export through."""
    def make() -> nn.Module:
        return factory(attn="eager")
    make.__name__ = f"{factory.__name__}_eager"
    return make


_ENC = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=32, num_labels=3)
_DEC = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=32, num_labels=3, pad_token_id=0)


# -- text encoders -------------------------------------------------------------------------------------------------
def bert(attn: str | None = None) -> nn.Module:
    return _hf("BertConfig", "BertForSequenceClassification", attn, **_ENC)


def distilbert(attn: str | None = None) -> nn.Module:
    return _hf("DistilBertConfig", "DistilBertForSequenceClassification", attn, vocab_size=96, dim=32, n_layers=2,
               n_heads=4, hidden_dim=64, max_position_embeddings=32, num_labels=3)


def roberta(attn: str | None = None) -> nn.Module:
    return _hf("RobertaConfig", "RobertaForSequenceClassification", attn, **{**_ENC, "max_position_embeddings": 40},
               pad_token_id=0)


def albert(attn: str | None = None) -> nn.Module:
    return _hf("AlbertConfig", "AlbertForSequenceClassification", attn, **_ENC, embedding_size=16)


def electra(attn: str | None = None) -> nn.Module:
    return _hf("ElectraConfig", "ElectraForSequenceClassification", attn, **_ENC, embedding_size=16)


def deberta_v2(attn: str | None = None) -> nn.Module:
    return _hf("DebertaV2Config", "DebertaV2ForSequenceClassification", attn, **_ENC, relative_attention=True,
               position_buckets=8, max_relative_positions=16, pos_att_type=["p2c", "c2p"])


# -- text decoders (last-token pooling) ---------------------------------------------------------------------------
def gpt2(attn: str | None = None) -> nn.Module:
    return _hf("GPT2Config", "GPT2ForSequenceClassification", attn, vocab_size=96, n_embd=32, n_layer=2, n_head=4,
               n_positions=32, num_labels=3, pad_token_id=0)


def llama(attn: str | None = None) -> nn.Module:
    return _hf("LlamaConfig", "LlamaForSequenceClassification", attn, **_DEC, num_key_value_heads=2)


def qwen2(attn: str | None = None) -> nn.Module:
    return _hf("Qwen2Config", "Qwen2ForSequenceClassification", attn, **_DEC, num_key_value_heads=2)


def phi(attn: str | None = None) -> nn.Module:
    return _hf("PhiConfig", "PhiForSequenceClassification", attn, **_DEC)


# -- audio --------------------------------------------------------------------------------------------------------
def whisper_encoder(attn: str | None = None) -> nn.Module:
    return _hf("WhisperConfig", "WhisperForAudioClassification", attn, num_mel_bins=16, d_model=32, encoder_layers=2,
               encoder_attention_heads=4, encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=4,
               max_source_positions=16, num_labels=3, vocab_size=96)


_W2V = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16),
            conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
            num_labels=3, classifier_proj_size=16, mask_time_prob=0.0)


def hubert(attn: str | None = None) -> nn.Module:
    return _hf("HubertConfig", "HubertForSequenceClassification", attn, **_W2V)


def wav2vec2_conformer(attn: str | None = None) -> nn.Module:
    return _hf("Wav2Vec2ConformerConfig", "Wav2Vec2ConformerForSequenceClassification", attn, **_W2V,
               conv_depthwise_kernel_size=3, position_embeddings_type="relative")


def ast(attn: str | None = None) -> nn.Module:
    return _hf("ASTConfig", "ASTForAudioClassification", attn, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=64, patch_size=8, frequency_stride=8, time_stride=8,
               max_length=32, num_mel_bins=16, num_labels=3)


# -- vision -------------------------------------------------------------------------------------------------------
_VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, num_labels=3)


def vit(attn: str | None = None) -> nn.Module:
    return _hf("ViTConfig", "ViTForImageClassification", attn, **_VIT)


def deit(attn: str | None = None) -> nn.Module:
    return _hf("DeiTConfig", "DeiTForImageClassification", attn, **_VIT)


def convnext() -> nn.Module:
    return _hf("ConvNextConfig", "ConvNextForImageClassification", num_stages=2, hidden_sizes=[8, 16],
               depths=[1, 1], patch_size=4, num_labels=3)


def swin(attn: str | None = None) -> nn.Module:
    return _hf("SwinConfig", "SwinForImageClassification", attn, image_size=32, patch_size=4, embed_dim=16,
               depths=[1, 1], num_heads=[2, 4], window_size=4, num_labels=3)


def mobilevit() -> nn.Module:
    return _hf("MobileViTConfig", "MobileViTForImageClassification", image_size=32, patch_size=2,
               hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 16, 16, 16, 16, 32], num_labels=3)


def resnet() -> nn.Module:
    return _hf("ResNetConfig", "ResNetForImageClassification", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
               layer_type="basic", num_labels=3)


def segformer(attn: str | None = None) -> nn.Module:
    return _hf("SegformerConfig", "SegformerForImageClassification", attn, num_encoder_blocks=2, depths=[1, 1],
               sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
               mlp_ratios=[2, 2], num_labels=3)


def levit() -> nn.Module:
    return _hf("LevitConfig", "LevitForImageClassification", image_size=32, hidden_sizes=[16, 32, 48],
               num_attention_heads=[1, 2, 3], depths=[1, 1, 1], key_dim=[8, 8, 8], num_labels=3)


def mobilenet_v2() -> nn.Module:
    return _hf("MobileNetV2Config", "MobileNetV2ForImageClassification", image_size=32, depth_multiplier=0.25,
               num_labels=3)


# -- plain PyTorch ------------------------------------------------------------------------------------------------
class TCN(nn.Module):
    """Temporal convolutional network: dilated causal Conv1d residual blocks with weight-normed-free convs."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for i, (cin, cout) in enumerate([(8, 16), (16, 16), (16, 16)]):
            d = 2 ** i
            self.blocks.append(nn.ModuleDict({
                "conv": nn.Conv1d(cin, cout, 3, dilation=d, padding=2 * d),
                "skip": nn.Conv1d(cin, cout, 1)}))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        for b in self.blocks:
            y = b["conv"](h)[..., :h.shape[-1]]  # causal: drop the look-ahead
            h = torch.relu(y) + b["skip"](h)
        return self.head(h[..., -1])


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int = 4) -> None:
        super().__init__()
        e = c * expand
        self.block = nn.Sequential(
            nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.ReLU6(),
            nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e), nn.ReLU6(),
            nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class MobileNetV2Style(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(8), InvertedResidual(8))
        self.classifier = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.blocks(self.stem(x)).mean((2, 3)))


class UNetEncoder(nn.Module):
    """A UNet-style encoder with one skip decoded back up, pooled to a class score."""

    def __init__(self) -> None:
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU())
        self.down2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.fuse = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.down1(x)
        b = self.down2(a)
        h = torch.relu(self.fuse(torch.cat([a, self.up(b)], 1)))
        return self.head(h.mean((2, 3)))


class ConvAttention(nn.Module):
    """Conv stem then multi-head self-attention over the frames (a small conformer-like audio classifier)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(16, 32, 5, stride=2, padding=2), nn.BatchNorm1d(32), nn.GELU())
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).transpose(1, 2)
        h = self.norm(h + self.attn(h, h, h, need_weights=False)[0])
        return self.head(h.mean(1))


class NextToken(nn.Module):
    """A tiny language model's next-token head over a large vocabulary (6,000 classes)."""

    def __init__(self, vocab: int = 6000) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.mix = nn.Linear(16 * 4, 32)
        self.head = nn.Linear(32, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(tokens).flatten(1))))


def _plain(cls):  # noqa: ANN001, ANN202
    torch.manual_seed(0)
    return sane_init(cls())


def tcn() -> nn.Module:
    return _plain(TCN)


def mobilenet_v2_style() -> nn.Module:
    return _plain(MobileNetV2Style)


def unet_encoder() -> nn.Module:
    return _plain(UNetEncoder)


def conv_attention() -> nn.Module:
    return _plain(ConvAttention)


def next_token() -> nn.Module:
    return _plain(NextToken)


# The last-block families again with eager attention: there the attention itself trains, and the two
# implementations export different graphs (matmul + softmax vs scaled_dot_product_attention's IsNaN-guarded mask).
bert_eager, gpt2_eager, llama_eager, vit_eager = (_eager(f) for f in (bert, gpt2, llama, vit))


def _last(*patterns: str) -> list[str]:
    return [a for p in patterns for a in ("--trainable", p)]


# family id -> (factory, export args). "-last" variants train the last block (or layer) and the head; every Hugging
# Face family uses the library's default attention (SDPA where it has one), "-eager" the eager implementation.
_BERT_LAST = TEXT + _last(r"bert\.encoder\.layer\.1\.", "^classifier")
_GPT2_LAST = TEXT + _last(r"transformer\.h\.1\.", r"transformer\.ln_f", "^score")
_LLAMA_LAST = TEXT + _last(r"model\.layers\.1\.", r"model\.norm", "^score")
_VIT_LAST = IMAGE + _last(r"vit\.layers\.1\.", r"vit\.layernorm", "^classifier")
WIDE: dict[str, tuple[str, list[str]]] = {
    "bert": ("bert", TEXT),
    "bert-last": ("bert", _BERT_LAST),
    "bert-last-eager": ("bert_eager", _BERT_LAST),
    "distilbert": ("distilbert", TEXT),
    "roberta": ("roberta", TEXT),
    "albert": ("albert", TEXT),
    "electra": ("electra", TEXT),
    "deberta-v2": ("deberta_v2", TEXT),
    "gpt2": ("gpt2", TEXT),
    "gpt2-last": ("gpt2", _GPT2_LAST),
    "gpt2-last-eager": ("gpt2_eager", _GPT2_LAST),
    "llama": ("llama", TEXT),
    "llama-last": ("llama", _LLAMA_LAST),
    "llama-last-eager": ("llama_eager", _LLAMA_LAST),
    "qwen2": ("qwen2", TEXT),
    "phi": ("phi", TEXT),
    "whisper-encoder": ("whisper_encoder", ["--input", "input_features:float32:1,16,32"]),
    "hubert": ("hubert", ["--input", "input_values:float32:1,400"]),
    "wav2vec2-conformer": ("wav2vec2_conformer", ["--input", "input_values:float32:1,400"]),
    "ast": ("ast", ["--input", "input_values:float32:1,32,16"]),
    "vit": ("vit", IMAGE),
    "vit-last": ("vit", _VIT_LAST),
    "vit-last-eager": ("vit_eager", _VIT_LAST),
    "deit": ("deit", IMAGE),
    "convnext": ("convnext", IMAGE),
    "swin": ("swin", IMAGE),
    "mobilevit": ("mobilevit", IMAGE),
    "resnet": ("resnet", IMAGE),
    "resnet-last": ("resnet", IMAGE + _last(r"resnet\.encoder\.stages\.1\.", "^classifier")),
    "segformer": ("segformer", IMAGE),
    "levit": ("levit", IMAGE),
    "mobilenet-v2": ("mobilenet_v2", IMAGE),
    "tcn-last": ("tcn", ["--input", "x:float32:1,24,8"] + _last(r"^blocks\.2\.", "^head")),
    "mobilenet-v2-style-last": ("mobilenet_v2_style", IMAGE + _last(r"^blocks\.1\.", "^classifier")),
    "unet-encoder": ("unet_encoder", IMAGE),
    "conv-attention-last": ("conv_attention", ["--input", "x:float32:1,16,20"] + _last(r"^(attn|norm|head)\.")),
    "next-token-6000": ("next_token", ["--input", "tokens:int64:1,4:0-6000"]),
}
