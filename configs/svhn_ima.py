"""IMA on SVHN (Ma et al., "Evaluation on Fashion-MNIST and SVHN", Fig. 8).

Run (svhn_cropped prepared locally with tensorflow-datasets):
    python -m arjax.launch --config configs/svhn_ima.py:ima --workdir runs/svhn_ima \
        --config.data.data_dir=$HOME/tensorflow_datasets
Smoke run on built-in synthetic 32x32x3 images (seconds, no data needed):
    python -m arjax.launch --config configs/svhn_ima.py:smoke --workdir runs/svhn_smoke

Variants: ce, adv<eps> (e.g. adv0.1), rand<eps>, ima, trades<beta> (e.g. trades6; eps
0.3, 20-PGD steps), mma<d_max> (e.g. mma0.3); append ',smoke'.
Network: COV(3,32,3,1,1)-LR-COV(32,32,3,2,1)-IN-LR-COV(32,64,3,1,1)-IN-LR-
COV(64,64,3,2,1)-IN-LR-COV(64,128,3,1,1)-IN-LR-COV(128,128,3,2,1)-IN-LR-
COV(128,256,4,1,0)-Flatten-LN-LR-Linear(256,10); 60 epochs, batch 128, Adam,
eps_max 0.3. Expected (paper Fig. 8, Tables 4-5): IMA on par with MMA and
above adv eps / TRADES in 100-PGD accuracy at larger noise levels.
"""

from arjax.experiment.presets import ima_image_config


def get_config(arg="ima"):
    return ima_image_config(
        arg, tfds_name="svhn_cropped", model_variant="svhn", image_shape=(32, 32, 3)
    )
