"""A PyTorch network trained by arjax: torchvision's ResNet-18 on SVHN, through torchax.

Run (svhn_cropped prepared locally with tensorflow-datasets; ``pip install
'arjax[torch]'`` and torchvision):
    python -m arjax.launch --config configs/torch_resnet18.py:trades \
        --workdir runs/torch_resnet18 --config.data.data_dir=$HOME/tensorflow_datasets
Smoke run on built-in synthetic 32x32x3 images (random init, no data, a minute on CPU):
    python -m arjax.launch --config configs/torch_resnet18.py:ima,smoke --workdir runs/t18
    arjax-evaluate --workdir runs/t18 --attack autoattack

Variants: those of ``configs/svhn_ima.py`` (ce, adv<eps>, rand<eps>, ima, trades<beta>,
mma<d_max>, each optionally ',smoke'): the IMA paper's SVHN protocol with the network
swapped for ``torchvision.models.resnet18(num_classes=10)`` (random init; set
``--config.model.torch_weights=resnet18.safetensors`` for a local state_dict file). Any
importable factory works (``--config.model.torch_factory=package.module:function``; for
keyword arguments such as timm's ``model_name``, edit ``TORCH_MODEL`` in a copy of this
file). ``torch_features="layer4"`` is what ARFL's L_robust and CAMs read. Each run
directory gets the trained weights as ``state_dict.safetensors``, which
``module.load_state_dict(safetensors.torch.load_file(path))`` takes back.
"""

from arjax.experiment.presets import ima_image_config

TORCH_MODEL = dict(
    name="torch",
    torch_factory="torchvision.models:resnet18",
    torch_kwargs={},  # num_classes comes from the data
    torch_weights="",
    torch_features="layer4",
    input_norm="none",
    dtype="float32",
)


def get_config(arg="trades"):
    config = ima_image_config(
        arg, tfds_name="svhn_cropped", model_variant="svhn", image_shape=(32, 32, 3)
    )
    config.name = config.name.replace("svhn_cropped_ima", "svhn_torch_resnet18")
    config.model = dict(TORCH_MODEL)
    if config.name.endswith(",smoke"):
        config.train.num_epochs = 1  # 4 steps of 16: each is a ResNet-18 on the CPU
        config.train.log_every = 2
        config.train.eval_every = 4
        config.train.checkpoint_every = 2
        config.eval.eps_l2 = ()  # one curve: each norm is another compile of the attack
        config.eval.losses = ("ce",)
    return config
