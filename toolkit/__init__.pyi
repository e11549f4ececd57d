# What type checkers see of `toolkit` (PEP 561): the stable API that __init__.py imports lazily (PEP 562).
from toolkit.compare import ParityReport as ParityReport
from toolkit.compare import RuntimeReport as RuntimeReport
from toolkit.compare import VerifyReport as VerifyReport
from toolkit.errors import InputError as InputError
from toolkit.errors import LstmOnnxError as LstmOnnxError
from toolkit.export_result import ExportResult as ExportResult
from toolkit.exporter import export_file as export_file
from toolkit.exporter import export_model as export_model
from toolkit.options import ExportOptions as ExportOptions
from toolkit.runner import inspect_model as inspect_model
from toolkit.runtimes.registry import open_runner as open_runner
from toolkit.stream_session import open_stream as open_stream
from toolkit.tolerance import Tolerances as Tolerances
from toolkit.verification import verify_files as verify_files
from toolkit.verification import verify_runtimes as verify_runtimes

__version__: str
__all__: list[str]
