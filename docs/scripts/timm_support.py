"""Which timm architectures CTC and Integrative CAM explain, one model of each family.

timm (PyTorch Image Models) holds most image classifiers published in the last five years. For
one small model of each family (random weights: every BatchNorm's statistics, every bias and
every normalisation weight set to random values, and every parameter moved by noise of standard
deviation 0.05, since timm starts heads and layer scales at zero), in float64 on a 2 x 2 grid of
features, two images:

- ``CTC "proportional"``: the largest relative difference between the sum of the feature scores
  and the target logit (exact propagation gives float64 rounding, ~1e-15), or the first line of
  the error when CTC refuses the model;
- ``CTC "reference"``: whether the published formula runs and gives finite scores;
- ``IntegrativeCAM``: how many stages it found and fused, or the first line of its error.

Used on the "Choose a method" page. Needs ``pip install timm`` (the ``dev`` extra has it). Run:
``python docs/scripts/timm_support.py [--models seresnet18 eva02_tiny_patch14_224]`` (about
7 minutes on one CPU thread).
"""

from __future__ import annotations

import argparse

import timm
import torch
from torchvision_support import print_table

from ctc_plugin.model_families import timm_classifier

#: One model of each timm family, the input side it runs at (64, or the size the model is
#: built for), and what it brings that older networks lack.
FAMILIES: dict[str, tuple[str, int, str]] = {
    "SE-ResNet": ("seresnet18", 64, "squeeze-excitation"),
    "ECA-ResNet": ("ecaresnet26t", 64, "ECA: conv1d over pooled channels, sigmoid gate"),
    "SK-ResNet": ("skresnet18", 64, "selective kernels: softmax over branches"),
    "ResNeSt": ("resnest14d", 64, "split attention (radix softmax)"),
    "Res2Net": ("res2net50_26w_4s", 64, "hierarchical splits"),
    "RegNetY": ("regnety_002", 64, "SE"),
    "EfficientNet": ("efficientnet_b0", 64, "SE, SiLU"),
    "EfficientNet (TF padding)": ("tf_efficientnet_b0", 64, "dynamic same padding"),
    "MobileNetV3": ("mobilenetv3_small_050", 64, "hard-swish, hard-sigmoid SE"),
    "MobileNetV4": ("mobilenetv4_conv_small", 64, "universal inverted bottlenecks"),
    "GhostNet": ("ghostnet_050", 64, "ghost modules"),
    "GhostNetV2": ("ghostnetv2_100", 64, "DFC attention: sigmoid gate, upsampled"),
    "RepGhostNet": ("repghostnet_050", 64, "re-parameterisable ghost modules"),
    "ReXNet": ("rexnet_100", 64, "SE, SiLU, channel padding"),
    "LCNet": ("lcnet_050", 64, "hard-swish, SE"),
    "HGNetV2": ("hgnetv2_b0", 64, "learnable affine blocks"),
    "VoVNet (eSE)": ("ese_vovnet19b_dw", 64, "effective SE"),
    "SelecSLS": ("selecsls42b", 64, "concatenations"),
    "DLA": ("dla34", 64, "deep layer aggregation"),
    "CSPResNet": ("cspresnet50", 64, "cross-stage partial"),
    "NF-ResNet": ("nf_resnet26", 64, "weight standardisation, no BatchNorm"),
    "ECA-NFNet": ("eca_nfnet_l0", 64, "scaled activations, ECA, skip gains"),
    "RepVGG": ("repvgg_a0", 64, "re-parameterisable branches"),
    "MobileOne": ("mobileone_s0", 64, "re-parameterisable branches"),
    "FasterNet": ("fasternet_t0", 64, "partial convolutions"),
    "VGG": ("vgg11", 64, "plain convolutions, a convolutional pre-logits block"),
    "Inception v3": ("inception_v3", 80, "factorised convolutions, concatenations"),
    "Inception v4": ("inception_v4", 80, "inception blocks, concatenations"),
    "Inception-ResNet v2": ("inception_resnet_v2", 80, "scaled residual inception blocks"),
    "Xception": ("legacy_xception", 64, "depthwise separable convolutions"),
    "Xception (aligned)": ("xception41p", 64, "pre-activation separable blocks"),
    "DenseNet": ("densenet121", 64, "dense concatenations, pre-activation BatchNorm"),
    "DPN": ("dpn48b", 64, "dual paths: a residual sum and a dense concatenation"),
    "ResNetV2": ("resnetv2_18", 64, "pre-activation residual blocks"),
    "SENet (legacy)": ("legacy_seresnet18", 64, "squeeze-excitation, the original layout"),
    "TResNet": ("tresnet_m", 64, "space-to-depth stem, anti-aliased downsampling, SE"),
    "HRNet": ("hrnet_w18_small", 64, "parallel resolutions exchanged by upsampling"),
    "NASNet": ("nasnetalarge", 64, "searched cells: a ReLU in each branch of a map"),
    "PNASNet": ("pnasnet5large", 64, "searched cells: a ReLU in each branch of a map"),
    "HardCoRe-NAS": ("hardcorenas_b", 64, "searched inverted residuals, hard-sigmoid SE"),
    "CSPNeXt": ("cspnext_tiny", 64, "5 x 5 depthwise CSP blocks, spatial pyramid pooling"),
    "LCNetV2": ("lcnetv2_small", 64, "re-parameterisable multi-scale depthwise branches"),
    "RepViT": ("repvit_m1", 64, "re-parameterisable depthwise token mixer, SE"),
    "ConvMixer": ("convmixer_768_32", 64, "patch embedding, depthwise mixing, GELU then BN"),
    "SwiftFormer": ("swiftformer_xs", 64, "additive attention of normalised queries, keys"),
    "EfficientViM": ("efficientvim_m1", 64, "hidden-state mixer (softmax over the tokens)"),
    "CPUBone": ("cpubone_nano", 64, "attention on convolutional maps"),
    "LowFormer": ("lowformer_b0", 64, "attention on downsampled convolutional maps"),
    "SHViT": ("shvit_s1", 128, "single-head attention on part of the channels"),
    "iFormer": ("iformer_t", 64, "modulation attention: sigmoid values and gate"),
    "MobileNetV5": ("mobilenetv5_base", 64, "multi-query attention, multi-scale fusion"),
    "CSATv2": ("csatv2", 128, "DCT stem, spatial attention across the batch"),
    "ConvNeXt": ("convnext_atto", 64, "LayerNorm, layer scale"),
    "ConvNeXt V2": ("convnextv2_atto", 64, "global response normalisation"),
    "InceptionNeXt": ("inception_next_atto", 64, "split depthwise convolutions"),
    "RDNet": ("rdnet_tiny", 64, "dense blocks, LayerNorm"),
    "StarNet": ("starnet_s1", 64, "star operation: a product of two branches"),
    "MambaOut": ("mambaout_femto", 64, "gated CNN: a product of two branches"),
    "PoolFormer": ("poolformer_s12", 64, "pooling token mixer, GroupNorm"),
    "PoolFormer v2": ("poolformerv2_s12", 64, "StarReLU: s * relu(x)^2 + b"),
    "MLP-Mixer": ("mixer_s16_224", 64, "token-mixing MLPs"),
    "ResMLP": ("resmlp_12_224", 64, "affine normalisation (addcmul)"),
    "gMLP": ("gmlp_s16_224", 64, "spatial gating: a product of two halves"),
    "ViT": ("vit_tiny_patch16_224", 64, "attention, LayerNorm, GELU"),
    "DeiT": ("deit_tiny_patch16_224", 64, "attention"),
    "DINOv2": ("vit_small_patch14_dinov2", 64, "layer scale"),
    "DINOv2 with registers": ("vit_small_patch14_reg4_dinov2", 64, "register tokens"),
    "CLIP ViT": ("vit_base_patch16_clip_224", 64, "pre-norm, QuickGELU-free OpenCLIP layout"),
    "EVA-02": ("eva02_tiny_patch14_224", 64, "SwiGLU, rotary position embedding"),
    "BEiT": ("beit_base_patch16_224", 64, "relative position bias"),
    "CaiT": ("cait_xxs24_224", 64, "talking heads, class attention"),
    "XCiT": ("xcit_nano_12_p16_224", 64, "cross-covariance attention (normalised q, k)"),
    "PiT": ("pit_ti_224", 64, "pooling by convolution between stages"),
    "TNT": ("tnt_s_patch16_224", 64, "pixel embedding by unfold"),
    "CrossViT": ("crossvit_tiny_240", 240, "two branches, cross attention"),
    "Twins-SVT": ("twins_svt_small", 64, "locally grouped and global attention"),
    "PVT v2": ("pvt_v2_b0", 64, "spatial-reduction attention"),
    "Swin": ("swin_tiny_patch4_window7_224", 64, "shifted windows"),
    "Swin v2": ("swinv2_tiny_window8_256", 64, "cosine attention, log-spaced position bias"),
    "NesT": ("nest_tiny", 64, "nested blocks"),
    "DaViT": ("davit_tiny", 64, "channel attention"),
    "GCViT": ("gcvit_xxtiny", 64, "global query repeated per window"),
    "FocalNet": ("focalnet_tiny_srf", 64, "focal modulation (a product of two branches)"),
    "MViTv2": ("mvitv2_tiny", 64, "pooling attention"),
    "Hiera": ("hiera_tiny_224", 64, "mask-unit attention"),
    "MaxViT": ("maxvit_nano_rw_256", 64, "block and grid attention"),
    "CoAtNet": ("coatnet_nano_rw_224", 64, "convolution then attention"),
    "TinyViT": ("tiny_vit_5m_224", 64, "attention bias"),
    "LeViT": ("levit_128s", 64, "attention bias, hard-swish"),
    "EfficientFormer": ("efficientformer_l1", 224, "attention bias at a fixed size"),
    "EfficientFormerV2": ("efficientformerv2_s0", 64, "attention bias"),
    "FastViT": ("fastvit_t8", 64, "re-parameterisable token mixer"),
    "EdgeNeXt": ("edgenext_xx_small", 64, "transposed (channel) attention"),
    "MobileViT": ("mobilevit_xxs", 64, "unfolded patches through attention"),
    "MobileViTv2": ("mobilevitv2_050", 64, "separable linear attention"),
    "Visformer": ("visformer_tiny", 64, "BatchNorm in attention stages"),
    "CoaT Lite": ("coat_lite_tiny", 64, "factorised attention: q @ (softmax(k)^T v)"),
    "EfficientViT (MIT)": ("efficientvit_b0", 64, "ReLU linear attention"),
    "Sequencer": ("sequencer2d_s", 64, "bidirectional LSTMs"),
    "BoTNet": ("botnet26t_256", 64, "self-attention in place of a bottleneck's 3 × 3 convolution"),
    "HaloNet": (
        "halonet26t",
        256,
        "blocked attention with halos (its blocks must divide the maps)",
    ),
    "LambdaNet": ("lambda_resnet26t", 64, "lambda layers: softmax(k)ᵀ v applied to the queries"),
    "NextViT": ("nextvit_small", 64, "attention on tokens of a map, then convolutions"),
    "EfficientViT (MSRA)": ("efficientvit_m0", 64, "cascaded group attention"),
    "ConvFormer": ("convformer_s18", 64, "separable convolutions as token mixer"),
    "CAFormer": ("caformer_s18", 64, "convolution stages, then attention stages"),
    "ConViT": ("convit_tiny", 64, "gated positional self-attention"),
    "VOLO": ("volo_d1_224", 64, "outlook attention"),
    "ViT hybrid": ("vit_tiny_r_s16_p8_224", 64, "a ResNet stem under the ViT"),
    "ViT, relative positions": ("vit_relpos_small_patch16_224", 64, "relative position MLP"),
    "ViTamin": ("vitamin_small_224", 64, "MBConv stages, GeGLU"),
    "Swin v2 CR": ("swinv2_cr_tiny_ns_224", 64, "post-norm blocks, cosine attention"),
    "SAM ViT": ("samvit_base_patch16", 64, "windowed attention, decomposed relative positions"),
    "SAM 2 HieraDet": ("sam2_hiera_tiny", 64, "max pooling of windowed queries"),
    "NaFlexViT": ("naflexvit_base_patch16_gap", 64, "variable patch grids, registers"),
    "Qwen3 ViT": ("qwen3_vit_88m", 64, "learned grid resampled, 2-D RoPE"),
    "Gemma 4 ViT": ("gemma4_vit_167m", 64, "clipped linear layers, 2-D RoPE"),
    "DeepSeek ViT": ("deepseek_vit_412m", 56, "RMSNorm in float32, 2-D RoPE, SwiGLU"),
}


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="only these models (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    entries = [
        (family, name, size)
        for family, (name, size, _) in FAMILIES.items()
        if not args.models or name in args.models
    ]
    versions = f"torch {torch.__version__}, timm {timm.__version__}, float64"
    print_table(versions, entries, timm_classifier, seed=3, target=1)


if __name__ == "__main__":
    main()
