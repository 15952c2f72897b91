"""The image config works as an OmegaConf structured config and rejects what no loader can use."""

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from sparsedm.data.images import DATASET_DISPLAY_NAMES, ImageDataConfig, check_config, display_name
from sparsedm.errors import UserError


def test_omegaconf_holds_it_and_dotted_overrides_reach_it():
    cfg = OmegaConf.merge(
        OmegaConf.structured(ImageDataConfig),
        OmegaConf.from_dotlist(["name=celebahq", "path=/data/celebahq", "max_items=64", "val_size=10"]),
    )
    check_config(cfg)
    assert (cfg.name, cfg.max_items, cfg.val_size, cfg.train_size) == ("celebahq", 64, 10, None)
    with pytest.raises(ValidationError):
        OmegaConf.merge(OmegaConf.structured(ImageDataConfig), OmegaConf.from_dotlist(["image_size=big"]))


def test_unknown_name_lists_every_valid_name_on_one_line():
    with pytest.raises(UserError) as caught:
        check_config(ImageDataConfig(name="lsun"))
    message = str(caught.value)
    assert "\n" not in message and "'lsun'" in message
    assert all(name in message for name in DATASET_DISPLAY_NAMES)


def test_real_data_sets_need_a_path_and_the_stand_in_does_not():
    check_config(ImageDataConfig(name="openmoji"))
    for name in ("celebahq", "lsun_bedrooms", "imagenette", "folder"):
        with pytest.raises(UserError, match=r"data\.path"):
            check_config(ImageDataConfig(name=name))


@pytest.mark.parametrize("field, value", [("image_size", 4), ("train_size", 0), ("val_size", -1), ("max_items", 0)])
def test_out_of_range_values_are_user_errors(field, value):
    with pytest.raises(UserError, match=f"data.{field}={value}"):
        check_config(ImageDataConfig(**{field: value}))


def test_the_stand_in_is_named_as_one_and_paper_sets_by_their_names():
    assert display_name(ImageDataConfig()) == "openmoji (stand-in, not a paper data set)"
    assert display_name(ImageDataConfig(name="celebahq", path="x")) == "CelebA-HQ"
    assert display_name(ImageDataConfig(name="lsun_bedrooms", path="x")) == "LSUN-Bedrooms"
    with pytest.raises(UserError):
        display_name(ImageDataConfig(name="cifar10"))
