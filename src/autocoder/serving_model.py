"""The file MLflow logs as the registry model's code ("models from code": no pickle); see serving.py."""

from mlflow.models import set_model

from autocoder.serving import CompletionModel

set_model(CompletionModel())
