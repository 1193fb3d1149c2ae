"""The code a registered ehrfm model is loaded from (MLflow "models from code").

:func:`ehrfm.serve.pyfunc.log_pyfunc` logs this file as the model's ``python_model`` and MLflow runs it when
the model is loaded, so the model holds no pickled Python object (nothing to unpickle, no cloudpickle
version to match): the wheel it carries and its serving folder are all it needs. Not imported by ehrfm
itself: MLflow executes it.
"""

import mlflow.models

from ehrfm.serve.pyfunc import EhrfmPyfunc

mlflow.models.set_model(EhrfmPyfunc())
