"""das_train: interventions on PyTorch models, and training for trainable interventions.

The names below are the API of the pyvene seeds, so code written for it runs after
``import das_train as pv``.
"""

from das_train.core.builtin_gru import (
    GRUClassifier,
    GRUConfig,
    GRULMHeadModel,
    GRUModel,
    create_gru,
    create_gru_classifier,
    create_gru_lm,
)
from das_train.core.builtin_models import MLPClassifier, MLPConfig, create_mlp_classifier
from das_train.core.config import IntervenableConfig, RepresentationConfig
from das_train.core.loaders import (
    HubUnavailableError,
    create_gpt2,
    create_gpt2_lm,
    create_gpt_neo,
    create_gpt_neox,
    create_llama,
    create_olmo,
    embed_to_distrib,
)
from das_train.core.locations import LocationError
from das_train.core.model import IntervenableModel, IntervenableOutput
from das_train.core.pyvene_utils import (
    GET_LOC,
    build_intervenable_model,
    closeness_to_permutation_loss,
    count_parameters,
    create_directory,
    format_token,
    get_batch_size,
    get_list_depth,
    harmonic_sigmoid_boundary,
    random_permutation_matrix,
    set_seed,
    sigmoid_boundary,
    top_vals,
)
from das_train.core.sites import (
    ArchitectureTable,
    ComponentSpec,
    register_architecture,
    type_to_dimension_mapping,
    type_to_module_mapping,
)
from das_train.data.causal_model import CausalModel
from das_train.interventions.autoencoder import (
    AutoencoderIntervention,
    JumpReLUAutoencoderIntervention,
)
from das_train.interventions.base import (
    INTERVENTION_REGISTRY,
    BasisAgnosticIntervention,
    ConstantSourceIntervention,
    DistributedRepresentationIntervention,
    Intervention,
    LambdaIntervention,
    LocalistRepresentationIntervention,
    SharedWeightsTrainableIntervention,
    SourcelessIntervention,
    TrainableIntervention,
)
from das_train.interventions.calling import InterventionOutput
from das_train.interventions.lora import LoRAIntervention
from das_train.interventions.masks import (
    BoundlessRotatedSpaceIntervention,
    SigmoidMaskIntervention,
    SigmoidMaskRotatedSpaceIntervention,
)
from das_train.interventions.pca import PCARotatedSpaceIntervention
from das_train.interventions.reft import LoreftIntervention, NoreftIntervention
from das_train.interventions.rotated import (
    LowRankRotatedSpaceIntervention,
    RotatedSpaceIntervention,
)
from das_train.interventions.static import (
    AdditionIntervention,
    CollectIntervention,
    NoiseIntervention,
    SkipIntervention,
    SubtractionIntervention,
    VanillaIntervention,
    ZeroIntervention,
)

__version__ = "0.1.0"

__all__ = [name for name in dir() if not name.startswith("_")]
