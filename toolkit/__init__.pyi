# What type checkers see of `toolkit` (PEP 561): the stable API that __init__.py imports lazily (PEP 562).
from toolkit.checking.results import ParityReport as ParityReport
from toolkit.checking.results import RuntimeReport as RuntimeReport
from toolkit.checking.results import VerifyReport as VerifyReport
from toolkit.checking.verify import verify_files as verify_files
from toolkit.checking.verify import verify_runtimes as verify_runtimes
from toolkit.deploy.stream_session import open_stream as open_stream
from toolkit.errors import InputError as InputError
from toolkit.errors import LstmOnnxError as LstmOnnxError
from toolkit.export.exporter import export_file as export_file
from toolkit.export.exporter import export_model as export_model
from toolkit.export.result import ExportResult as ExportResult
from toolkit.onnxfile.model import inspect_model as inspect_model
from toolkit.options import ExportOptions as ExportOptions
from toolkit.runtimes.registry import open_runner as open_runner
from toolkit.tolerance import Tolerances as Tolerances

__version__: str
__all__: list[str]
