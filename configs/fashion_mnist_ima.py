"""IMA on Fashion-MNIST (Ma et al., "Evaluation on Fashion-MNIST and SVHN", Fig. 7).

Run (Fashion-MNIST prepared locally with tensorflow-datasets, e.g. in ~/tensorflow_datasets):
    python -m arjax.launch --config configs/fashion_mnist_ima.py:ima --workdir runs/fmnist_ima \
        --config.data.data_dir=$HOME/tensorflow_datasets
Smoke run on built-in synthetic 28x28x1 images (seconds, no data needed):
    python -m arjax.launch --config configs/fashion_mnist_ima.py:smoke --workdir runs/fmnist_smoke

Variants: ce, adv<eps> (e.g. adv0.1), rand<eps>, ima, trades<beta> (e.g. trades6; eps
0.3, 20-PGD steps), mma<d_max> (e.g. mma0.3); append ',smoke'.
Network: COV(1,64,5,2,2)-LR-COV(64,128,5,2,2)-IN-LR-COV(128,256,5,2,2)-IN-LR-
COV(256,512,4,1,0)-Flatten-LN-LR-Linear(512,10); 60 epochs, batch 128, Adam,
eps_max 0.3. Expected (paper Fig. 7): IMA's 100-PGD accuracy-vs-noise curve
above adv eps and TRADES at most noise levels, close to MMA.
"""

from arjax.experiment.presets import ima_image_config


def get_config(arg="ima"):
    return ima_image_config(
        arg, tfds_name="fashion_mnist", model_variant="fmnist", image_shape=(28, 28, 1)
    )
