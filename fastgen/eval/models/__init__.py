"""Networks that score images, each loaded from local files or the Hugging Face cache: the Inception feature
extractor (FID), open_clip models (CLIP score), the LAION aesthetic predictor, the shipped digit classifier, and
the reward models (ImageReward, HPSv2, PickScore) that both evaluation and reward feedback use."""
