"""Architectures of the backbones fastgen builds: SD1.5's real shapes and small ones for CPU work.

Each entry gives diffusers/transformers config dicts for the UNet, the CLIP text encoder and the
(optional) VAE, plus the noise schedule. `sd15` is Stable Diffusion v1.5's exact architecture
(860M UNet, CLIP ViT-L/14 text encoder, 84M VAE); `tiny_latent` keeps its structure (latent UNet
with cross-attention, KL-VAE) at toy size; `mnist_pixel` is a small pixel-space UNet for 32x32
single-channel digits (the first MNIST teacher: SD's schedule, eps-prediction); `mnist_pixel_ztsnr` is the
pixel-space teacher recipe fixed for non-zero terminal SNR: SD's betas rescaled to zero terminal SNR with
v-prediction (Lin et al. 2024, arXiv 2305.08891), 32/64/128 channels, two layers per block, 4+ channels per
norm group.
"""

SD15_SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}

# The small CLIP text encoder of the toy backbones (real CLIP tokenizer, 16 tokens, 32 wide).
SMALL_TEXT_ENCODER = dict(
    vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=16, projection_dim=32,
)

ARCHITECTURES: dict[str, dict] = {
    "sd15": {
        "unet": dict(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768, attention_head_dim=8,
        ),
        "text_encoder": dict(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        ),
        "schedule": SD15_SCHEDULE,
        "prediction_type": "epsilon",
        "max_prompt_length": 77,
    },
    "tiny_latent": {
        "unet": dict(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16,
        ),
        "text_encoder": SMALL_TEXT_ENCODER,
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=32,
            block_out_channels=(16, 32), norm_num_groups=8,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        ),
        "schedule": SD15_SCHEDULE,
        "prediction_type": "epsilon",
        "max_prompt_length": 16,
    },
    "mnist_pixel": {
        "unet": dict(
            sample_size=32, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32, 64),
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),  # attention at 8x8 only: 2x faster on CPU
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16,
        ),
        "text_encoder": SMALL_TEXT_ENCODER,
        "vae": None,
        "schedule": SD15_SCHEDULE,
        "prediction_type": "epsilon",
        "max_prompt_length": 16,
    },
    "mnist_pixel_ztsnr": {
        "unet": dict(
            sample_size=32, in_channels=1, out_channels=1, layers_per_block=2, block_out_channels=(32, 64, 128),
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
        ),
        "text_encoder": SMALL_TEXT_ENCODER,
        "vae": None,
        "schedule": {**SD15_SCHEDULE, "rescale_betas_zero_snr": True},
        "prediction_type": "v_prediction",
        "max_prompt_length": 16,
    },
}
