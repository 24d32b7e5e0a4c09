"""Definitions taught in the notebooks, generated from their ``#@save`` cells.

DO NOT EDIT: edit the notebook cell named above each block, then run ``make lib``.
"""

import os

import keras
import tensorflow as tf

# ---- notebooks/07_input_pipeline_and_augmentation.ipynb, cell 8 --------------------

def decode_resize(path, image_size):
    """Read one image file into uint8 RGB pixels, resized to image_size x image_size."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.resize(image, [image_size, image_size], antialias=True)  # float32
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)  # 4x smaller to cache
    image.set_shape([image_size, image_size, 3])
    return image


# ---- notebooks/07_input_pipeline_and_augmentation.ipynb, cell 15 --------------------

def augmentation_layers(rotation=20.0, zoom=0.1, brightness=0.1, flips=True, seed=0):
    """Study B's augmentation as Keras layers, applied to [0, 255] pixels of the training batches."""
    layers = []
    if flips:
        layers.append(keras.layers.RandomFlip("horizontal_and_vertical", seed=seed))
    if rotation:  # RandomRotation takes a fraction of a full turn: 20 degrees = 20 / 360
        layers.append(keras.layers.RandomRotation(rotation / 360, fill_mode="reflect", seed=seed + 1))
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, fill_mode="reflect", seed=seed + 2))
    if brightness:  # value_range: the layer runs on raw pixels, before the model's own scaling
        layers.append(keras.layers.RandomBrightness(brightness, value_range=(0, 255), seed=seed + 3))
    if not layers:  # everything switched off: pass the images through unchanged
        layers.append(keras.layers.Identity())
    return keras.Sequential(layers, name="augmentation")


# ---- notebooks/07_input_pipeline_and_augmentation.ipynb, cell 21 --------------------

def make_dataset(paths, labels, n_classes, image_size, batch_size, *, augment=None, shuffle=False, seed=0, cache=False):
    """A tf.data pipeline: file paths and class indices -> batches of (float32 pixels in [0, 255], one-hot labels)."""
    ds = tf.data.Dataset.from_tensor_slices((list(paths), list(labels)))
    if shuffle and not cache:  # shuffling file names is cheap: the whole split fits the buffer
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(
        lambda path, y: (decode_resize(path, image_size), tf.one_hot(y, n_classes)), num_parallel_calls=tf.data.AUTOTUNE
    )  # decode several files at once
    if cache:  # keep the decoded images (in memory, or in the file named by `cache`) after epoch 1
        ds = ds.cache(cache if isinstance(cache, str) else "")
        if shuffle:
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
    if augment is not None:  # training split only; sequential, so a seed gives the same images
        ds = ds.map(lambda x, y: (augment(x, training=True), y))
    return ds.prefetch(tf.data.AUTOTUNE)  # prepare the next batch while the model computes


# ---- notebooks/08_baseline_cnns.ipynb, cell 12 --------------------------------------

def build_cnn1(n_classes, image_size, filters=(6, 16), kernels=(5, 3), dense=(120, 84), activation="relu"):
    """Study B's CNN1: two convolutions (5x5, 3x3), each with max pooling, then three dense layers."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255, name="scale_0_1")(inputs)  # raw pixels in, [0, 1] inside
    for i, (n_filters, kernel) in enumerate(zip(filters, kernels), start=1):
        x = keras.layers.Conv2D(n_filters, kernel, activation=activation, name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for j, units in enumerate(dense, start=1):
        x = keras.layers.Dense(units, activation=activation, name=f"fc{j}")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="cnn1")


# ---- notebooks/08_baseline_cnns.ipynb, cell 17 --------------------------------------

STUDY_B_CNN2_BLOCKS = ((6, 5, 1, 0), (12, 3, 1, 0), (32, 3, 1, 1))  # [filters, kernel, stride, padding]


def build_cnn2(n_classes, image_size, blocks=STUDY_B_CNN2_BLOCKS, dense=(120, 84), activation="relu", dropout=0.0):
    """Study B's CNN2: conv blocks [filters, kernel, stride, padding], each with max pooling, then three dense layers."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255, name="scale_0_1")(inputs)
    for i, (n_filters, kernel, stride, padding) in enumerate(blocks, start=1):
        if padding:  # PyTorch's padding=1 adds one pixel of zeros on every side
            x = keras.layers.ZeroPadding2D(padding, name=f"pad{i}")(x)
        x = keras.layers.Conv2D(n_filters, kernel, strides=stride, activation=activation, name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for j, units in enumerate(dense, start=1):
        x = keras.layers.Dense(units, activation=activation, name=f"fc{j}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout{j}")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="cnn2")


# ---- notebooks/08_baseline_cnns.ipynb, cell 24 --------------------------------------

def residual_block(x, filters, stride, name, bn_momentum=0.9):
    """ResNet's BasicBlock: relu(F(x) + shortcut(x)), F = two 3x3 convolutions with BatchNorm (He et al., 2016)."""
    L = keras.layers
    y = L.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = L.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name=f"{name}_bn1")(y)
    y = L.Activation("relu", name=f"{name}_relu1")(y)
    y = L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = L.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name=f"{name}_bn2")(y)
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:  # the shape changes: project x with a 1x1 convolution
        shortcut = L.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
        shortcut = L.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name=f"{name}_proj_bn")(shortcut)
    return L.Activation("relu", name=f"{name}_out")(L.Add(name=f"{name}_add")([y, shortcut]))


def build_resnet18(n_classes, image_size, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), bn_momentum=0.9):
    """Study B's ResNet18: a 7x7 stem, four stages of BasicBlocks, global average pooling, one Dense layer."""
    L = keras.layers
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = L.Rescaling(1 / 255, name="scale_0_1")(inputs)  # Study B: pixels to [0, 1]
    x = L.ZeroPadding2D(3, name="stem_pad")(x)  # PyTorch's padding=3
    x = L.Conv2D(widths[0], 7, strides=2, use_bias=False, name="stem_conv")(x)
    x = L.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name="stem_bn")(x)
    x = L.Activation("relu", name="stem_relu")(x)
    x = L.ZeroPadding2D(1, name="stem_pool_pad")(x)  # zeros are safe before a max: the ReLU output is >= 0
    x = L.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    for stage, (n_blocks, width) in enumerate(zip(blocks, widths), start=1):
        for block in range(1, n_blocks + 1):
            stride = 2 if stage > 1 and block == 1 else 1  # stages 2-4 halve the map in their first block
            x = residual_block(x, width, stride, f"stage{stage}_block{block}", bn_momentum)
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = L.Dense(n_classes, activation="softmax", dtype="float32", name="predictions")(x)  # the new "linear layer"
    return keras.Model(inputs, outputs, name="resnet18")


# ---- notebooks/09_resnet50_transfer_model.ipynb, cell 10 ----------------------------

@keras.saving.register_keras_serializable(package="wbc")
class ImageNetPreprocess(keras.layers.Layer):
    """ResNet50's `preprocess_input` as a layer: RGB -> BGR, minus the ImageNet mean, no scaling."""

    def call(self, pixels):
        return keras.applications.resnet50.preprocess_input(pixels)


# ---- notebooks/09_resnet50_transfer_model.ipynb, cell 14 ----------------------------

def build_resnet50_transfer(n_classes, image_size, weights=None, dense_units=256, dropout=0.5, l2=1e-4):
    """Study A's model: raw RGB pixels -> preprocess_input -> ResNet50 (frozen) -> BatchNorm -> Dense -> Dropout -> softmax.

    `weights`: None (random), "imagenet", or the path of the ImageNet no-top weights file.
    """
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = ImageNetPreprocess(name="imagenet_preprocess")(inputs)
    # input_tensor builds the ResNet50 layers into this model ("flat"), so Grad-CAM can reach them
    base = keras.applications.ResNet50(include_top=False, weights=weights, input_tensor=x, pooling="avg")
    base.trainable = False  # phase 1: only the head learns; frozen BatchNorm runs in inference mode
    x = keras.layers.BatchNormalization(name="head_bn")(base.output)
    x = keras.layers.Dense(
        dense_units, activation="relu", kernel_regularizer=keras.regularizers.L2(l2), name="head_dense"
    )(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="resnet50_transfer")


# ---- notebooks/10_training_on_gpu.ipynb, cell 11 ------------------------------------

BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # /proc/cpuinfo names: AVX-512 BF16, Intel AMX, Arm BF16
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def cpu_has_bfloat16(cpuinfo="/proc/cpuinfo"):
    """True when the CPU computes in bfloat16 in hardware (Linux reads it from /proc/cpuinfo; elsewhere False)."""
    try:
        with open(cpuinfo) as f:
            return bool(BF16_CPU_FLAGS & set(f.read().split()))
    except OSError:  # no /proc/cpuinfo (macOS, Windows): no way to tell, so float32
        return False


def choose_precision(gpus, mixed_precision="auto"):
    """The dtype policy: an explicit choice (a policy name, True or False) always wins; "auto" looks at the hardware."""
    if mixed_precision in POLICIES:
        return mixed_precision
    if isinstance(mixed_precision, bool):
        return ("mixed_float16" if gpus else "mixed_bfloat16") if mixed_precision else "float32"
    if mixed_precision != "auto":
        raise ValueError(f"mixed_precision={mixed_precision!r}: use 'auto', True, False or one of {POLICIES}")
    if gpus:  # float16 pays only on tensor cores: compute capability 7.0 (Volta) and later
        capability = [tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0)) for g in gpus]
        return "mixed_float16" if min(capability) >= (7, 0) else "float32"
    return "mixed_bfloat16" if cpu_has_bfloat16() else "float32"


def configure_device(mixed_precision="auto"):
    """Set the dtype policy (choose_precision) and return the tf.distribute strategy for the devices present."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)  # take GPU memory as needed
        except RuntimeError:  # the GPU was already initialised: keep what it has
            pass
    keras.mixed_precision.set_global_policy(choose_precision(gpus, mixed_precision))
    if "TF_CONFIG" in os.environ:  # several machines: TF_CONFIG lists them all and says which one this is
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()  # one model copy per GPU, gradients summed
    return tf.distribute.get_strategy()  # the default: one device


# ---- notebooks/10_training_on_gpu.ipynb, cell 18 ------------------------------------

def standard_callbacks(run_dir, patience=5, min_epochs=0, reduce_lr=False):
    """EarlyStopping, ModelCheckpoint, CSVLogger and TerminateOnNaN (and ReduceLROnPlateau if asked) for one run folder."""
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy",
            mode="max",
            patience=patience,
            start_from_epoch=min_epochs,
            restore_best_weights=True,
        ),
        keras.callbacks.ModelCheckpoint(
            f"{run_dir}/best.weights.h5",
            monitor="val_accuracy",
            mode="max",
            save_best_only=True,
            save_weights_only=True,
        ),
        keras.callbacks.CSVLogger(f"{run_dir}/history.csv", append=True),  # one row per epoch
        keras.callbacks.TerminateOnNaN(),
    ]
    if reduce_lr:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.5, patience=max(1, patience // 2), min_lr=1e-6
            )
        )
    return callbacks


# ---- notebooks/10_training_on_gpu.ipynb, cell 20 ------------------------------------

def unfreeze_top(model, first_layer="conv5_block1_1_conv"):
    """Phase 2: make the backbone trainable from `first_layer` upwards, every BatchNorm layer kept frozen."""
    names = [layer.name for layer in model.layers]
    for layer in model.layers[names.index(first_layer) :]:
        if layer.name.startswith("conv"):  # backbone layers; the head (head_*) trains already
            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    return [layer.name for layer in model.layers if layer.trainable and layer.weights]


# ---- notebooks/10_training_on_gpu.ipynb, cell 21 ------------------------------------

def fit_two_phase(
    model,
    train_ds,
    val_ds,
    run_dir,
    *,
    epochs,
    lr,
    fine_tune_epochs=0,
    fine_tune_lr=1e-5,
    patience=5,
    min_epochs=0,
    reduce_lr=False,
    class_weight=None,
    verbose=1,
):
    """Phase 1 trains what is trainable at `lr`; phase 2 (if `fine_tune_epochs`) unfreezes the top of the
    backbone and goes on at `fine_tune_lr`. The model ends with the best epoch's weights of either phase."""
    callbacks = standard_callbacks(run_dir, patience, min_epochs, reduce_lr)  # shared: one "best" for both
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="categorical_crossentropy", metrics=["accuracy"])
    fit_args = dict(
        validation_data=val_ds, callbacks=callbacks, class_weight=class_weight, verbose=verbose, shuffle=False
    )  # the tf.data pipeline shuffles already
    histories = [model.fit(train_ds, epochs=epochs, **fit_args)]
    if fine_tune_epochs:
        unfreeze_top(model)  # stage 5 trainable, its BatchNorm frozen
        model.compile(
            optimizer=keras.optimizers.Adam(fine_tune_lr), loss="categorical_crossentropy", metrics=["accuracy"]
        )  # recompile: the trainable set has changed
        done = len(histories[0].epoch)
        histories.append(model.fit(train_ds, initial_epoch=done, epochs=done + fine_tune_epochs, **fit_args))
    model.load_weights(f"{run_dir}/best.weights.h5", objects_to_skip=[model.optimizer])  # weights only, best epoch
    return histories


# ---- notebooks/10_training_on_gpu.ipynb, cell 39 ------------------------------------

def build_small_resnet(n_classes, image_size, widths=(32, 64, 128, 256), dropout=0.2, bn_momentum=0.9):
    """A compact ResNet trained from scratch (the CPU recipe): one residual block per width."""
    L = keras.layers
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = L.Rescaling(1 / 255, name="scale_0_1")(inputs)
    x = L.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = L.Activation("relu", name="stem_relu")(L.BatchNormalization(momentum=bn_momentum, name="stem_bn")(x))
    for s, width in enumerate(widths, start=1):
        stride, name = (1 if s == 1 else 2), f"stage{s}_block1"
        y = L.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
        y = L.Activation("relu", name=f"{name}_relu1")(
            L.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn1")(y)
        )
        y = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
        y = L.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn2")(y)
        shortcut = x
        if stride != 1 or x.shape[-1] != width:  # a 1x1 projection when the shape changes
            shortcut = L.Conv2D(width, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
            shortcut = L.BatchNormalization(momentum=bn_momentum, name=f"{name}_proj_bn")(shortcut)
        x = L.Activation("relu", name=f"{name}_out")(L.Add(name=f"{name}_add")([y, shortcut]))
    x = L.Dropout(dropout, name="dropout")(L.GlobalAveragePooling2D(name="avg_pool")(x))
    outputs = L.Dense(n_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="small_resnet")


# ---- notebooks/13_explainability_and_external_validation.ipynb, cell 6 -------------

def gradcam_heatmap(model, image, class_index=None, layer_name=None):
    """Grad-CAM of one image (raw pixels, H x W x 3): where the evidence for `class_index` lies, in [0, 1]."""
    if len(image.shape) != 3:
        raise ValueError(f"gradcam_heatmap explains one image of shape (H, W, 3), got shape {tuple(image.shape)}")
    if layer_name is None:  # 1. the last layer whose output is still a grid of feature maps
        layer_name = [layer.name for layer in model.layers if len(layer.output.shape) == 4][-1]
    grad_model = keras.Model(model.input, [model.get_layer(layer_name).output, model.output])  # 2.
    with tf.GradientTape() as tape:  # 3. record the forward pass of one image
        maps, probs = grad_model(tf.cast(image, tf.float32)[None], training=False)
        probs = tf.cast(probs, tf.float32)
        if class_index is None:  # 4. the predicted class
            class_index = int(tf.argmax(probs[0]))
        log_probs = tf.math.log(tf.clip_by_value(probs, 1e-30, 1.0))  # 5. = logit - mean logit: no saturation
        score = log_probs[:, class_index] - tf.reduce_mean(log_probs, axis=-1)
    grads = tf.cast(tape.gradient(score, maps), tf.float32)  # 6. d score / d every map value
    weights = tf.reduce_mean(grads, axis=(1, 2))  # 7. one weight per feature map: its mean gradient
    cam = tf.nn.relu(tf.reduce_sum(tf.cast(maps, tf.float32) * weights[:, None, None, :], axis=-1))[0]  # 8.
    cam = tf.image.resize(cam[..., None], image.shape[:2])[..., 0]  # 9. coarse grid -> image size
    return (cam / tf.maximum(tf.reduce_max(cam), 1e-12)).numpy()


# ---- notebooks/13_explainability_and_external_validation.ipynb, cell 33 -------------

RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))  # Ruifrok & Johnston (2001): rows H, E, D


@keras.saving.register_keras_serializable(package="wbc")
class StainJitter(keras.layers.Layer):
    """HED stain augmentation (Tellez et al., 2019): scale and shift the amount of each stain of each image at random."""

    def __init__(self, sigma=0.05, bias=0.05, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.sigma, self.bias, self.seed = sigma, bias, seed
        self.generator = keras.random.SeedGenerator(seed)
        self.stains = tf.constant(RGB_FROM_HED, tf.float32)  # 1. each stain's optical density in R, G, B

    def call(self, images, training=False):
        if not training:  # augmentation: training batches only
            return images
        od = -tf.math.log((tf.cast(images, tf.float32) + 1.0) / 256.0)  # 2. light -> optical density
        hed = tf.matmul(od, tf.linalg.inv(self.stains))  # 3. optical density -> amount of each stain
        shape = (tf.shape(images)[0], 1, 1, 3)  # 4. one factor and one shift per image and stain
        alpha = keras.random.uniform(shape, 1 - self.sigma, 1 + self.sigma, seed=self.generator)
        beta = keras.random.uniform(shape, -self.bias, self.bias, seed=self.generator)
        od = tf.matmul(hed * alpha + beta, self.stains)  # 5. jittered amounts -> optical density
        return tf.clip_by_value(256.0 * tf.exp(-od) - 1.0, 0.0, 255.0)  # 6. -> light: raw pixels in [0, 255]

    def get_config(self):
        return {**super().get_config(), "sigma": self.sigma, "bias": self.bias, "seed": self.seed}
