"""MS-COCO 2017 val as prompts + FID reference (`eval.coco_root`): caption rule and image order, the documented
resize, one-line errors, the doctor's completeness check, and run_eval / the floor against it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastgen.data import DataError
from fastgen.data.coco import CocoVal, coco_prompts
from fastgen.data.prompts import load_prompt_set, prompts_sha256
from fastgen.eval.evaluator.settings import eval_settings

SHARED_COCO_JSONL = Path("/work/shared/data/prompts/coco2017_val_captions.jsonl")


def write_coco(root, image_ids, size=(30, 20), extra_annotations=(), images_list=True, seed=0):
    """A COCO-layout folder: two captions per image (the lower id second in the file), random JPEGs."""
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(seed)
    images, annotations = [], list(extra_annotations)
    for k, image_id in enumerate(image_ids):
        name = f"{image_id:012d}.jpg"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / "val2017" / name)
        images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
        annotations += [{"image_id": image_id, "id": 900 + k, "caption": f"later caption {image_id}"},
                        {"image_id": image_id, "id": 100 + k, "caption": f" first caption {image_id}\n"}]
    data = {"images": images, "annotations": annotations} if images_list else {"annotations": annotations}
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps(data))
    return root


def test_first_caption_of_each_listed_image_in_image_id_order(tmp_path):
    stray = {"image_id": 7, "id": 1, "caption": "an image val2017 does not list"}
    coco = CocoVal(write_coco(tmp_path / "coco", [632, 139, 285], extra_annotations=[stray]), resolution=16)
    assert coco.eval_prompts(3) == ["first caption 139", "first caption 285", "first caption 632"]
    assert coco.eval_prompts(2) == coco.eval_prompts(3)[:2]  # fewer samples: the first images
    assert [path.name for path, _ in coco.entries()] == [f"{i:012d}.jpg" for i in (139, 285, 632)]
    unlisted = CocoVal(write_coco(tmp_path / "bare", [5, 3], images_list=False))  # no "images": standard names
    assert [path.name for path, _ in unlisted.entries()] == ["000000000003.jpg", "000000000005.jpg"]


@pytest.mark.skipif(not SHARED_COCO_JSONL.is_file(), reason="the shared COCO captions are not on this machine")
def test_official_annotations_give_the_shipped_coco5k_list_in_order(tmp_path):
    """captions_val2017.json rebuilt from the shared captions, with the stray entry a public copy carries: the
    5,000 prompts are the shipped list, so image k is the reference image of prompt k."""
    records = [json.loads(line) for line in SHARED_COCO_JSONL.read_text().splitlines()]
    ids = sorted({r["image_id"] for r in records}, reverse=True)
    stray = {"image_id": 336252, "id": 5392, "caption": "not part of val2017"}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2017.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in ids], "annotations": [stray, *records[::-1]]}))
    coco = CocoVal(tmp_path)
    assert coco.eval_prompts(5000) == load_prompt_set("coco2017_5k") and coco.standard_prompts_match(5000)
    assert coco.entries()[0][0].name == "000000000139.jpg"


def test_reference_images_are_pil_bicubic_short_side_then_centre_crop(tmp_path):
    coco = CocoVal(write_coco(tmp_path / "coco", [1, 2], size=(30, 20)), resolution=16)
    images = coco.reference_images(n=2)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.uint8
    with Image.open(tmp_path / "coco" / "val2017" / "000000000001.jpg") as f:
        expected = np.array(f.convert("RGB").resize((24, 16), Image.BICUBIC).crop((4, 0, 20, 16)))
    assert torch.equal(images[0], torch.from_numpy(expected).permute(2, 0, 1))
    spec = coco.reference_spec(n=2)
    assert spec["preprocessing"] == "pil_bicubic_short_side_center_crop" and spec["resolution"] == 16
    assert spec != CocoVal(coco.root, 32).reference_spec(n=2) and spec != coco.reference_spec(n=1)


def test_incomplete_folders_and_bad_settings_are_one_line_errors(tmp_path):
    root = write_coco(tmp_path / "coco", [1, 2, 3])
    (root / "val2017" / "000000000003.jpg").unlink()
    assert len(CocoVal(root, 8).reference_images(n=2)) == 2  # the missing image is not among those used
    with pytest.raises(DataError, match=r"1 of the 3 images used are missing, e\.g\. .*000000000003\.jpg"):
        CocoVal(root, 8).reference_images(n=3)
    with pytest.raises(DataError, match=r"eval\.num_samples=4: .* only 3 images"):
        CocoVal(root, 8).eval_prompts(4)
    with pytest.raises(DataError, match="set data.resolution or eval.resolution"):
        CocoVal(root).reference_images(n=1)
    (root / "annotations" / "captions_val2017.json").write_text('{"annotations": [{"image_id": 1}]}')
    with pytest.raises(DataError, match=r"annotations\[0\]: missing key\(s\) \['id', 'caption'\]"):
        CocoVal(root).entries()
    with pytest.raises(DataError, match="captions_val2017.json is missing"):
        CocoVal(tmp_path).entries()
    with pytest.raises(DataError, match="eval.prompts=parti conflicts with eval.coco_root"):
        coco_prompts(eval_settings({"coco_root": str(root), "prompts": "parti"}))


@pytest.mark.usefixtures("one_thread")
def test_run_eval_and_the_floor_score_against_coco(tmp_path):
    """Prompts and reference both come from COCO val; the floor (training images vs COCO) is nonzero."""
    from fastgen.eval.evaluator.run_eval import real_data_row, run_eval
    from fakes import FakeDataModule, FakeMethod

    root = write_coco(tmp_path / "coco", [11, 12, 13, 14, 15], size=(24, 16))
    cfg = {"coco_root": str(root), "prompts": "coco2017_5k", "num_samples": 4, "batch_size": 4, "steps": [1],
           "clip": {"enabled": False}, "aesthetic": {"enabled": False}, "fid": {"kid_subsets": 2},
           "cache_dir": str(tmp_path / "cache"), "leaderboard": str(tmp_path / "board.csv"), "grids": False}
    rows = run_eval(FakeMethod(shape=(3, 16, 16)), FakeDataModule(channels=3), cfg)
    floor = real_data_row(FakeDataModule(channels=3), cfg)
    expected_prompts = [f"first caption {i}" for i in (11, 12, 13, 14)]
    for row in (*rows, floor):
        assert row["reference"].startswith("coco2017-val2017-16px-n4-pil_bicubic_short_side_center_crop-")
        assert row["prompts_sha256"] == prompts_sha256(expected_prompts) and row["fid"] > 0
    assert floor["method"] == "real_data" and floor["reference_sha256"] == rows[0]["reference_sha256"]

    class ThreeTrainingImages(FakeDataModule):
        def split_size(self, split):
            return 3

    with pytest.warns(UserWarning, match="uses all 3 training images"):
        small = real_data_row(ThreeTrainingImages(channels=3), cfg)
    assert small["num_samples"] == 3 and small["fid"] > 0 and small["reference"] == floor["reference"]

    class LatentsOnly:  # a latent cache: captions, no images
        name = "cache"

    with pytest.warns(UserWarning, match="no real_data floor row"):
        assert real_data_row(LatentsOnly(), cfg) is None


def test_doctor_reports_whether_the_coco_folder_is_complete(tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from fastgen.runtime.config import CONFIG_PATH, register_resolvers
    from fastgen.doctor import report

    root = write_coco(tmp_path / "coco", [1, 2, 3])
    register_resolvers()

    def doctor(n):
        with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
            cfg = compose("config", overrides=["experiment=ufogen_sd15", "debug=tiny", "eval=coco5k", f"eval.coco_root={root}",
                                               f"eval.num_samples={n}", "data.resolution=16", f"data.root={tmp_path}",
                                               f"paths.cache_dir={tmp_path}/cache"])
        return report(cfg), capsys.readouterr().out

    code, out = doctor(3)
    assert code == 0, out
    assert "captions_val2017.json valid, 3 captioned images, all 3 used present" in out
    assert "differ from the shipped coco2017_5k list" in out and "coco2017-val2017-16px-n3-" in out
    (root / "val2017" / "000000000002.jpg").unlink()
    code, out = doctor(3)
    assert code == 1 and "[     MISSING] COCO reference (eval.coco_root)" in out and "000000000002.jpg" in out
