"""Writes quickstart.ipynb and explore_runs.ipynb (kept as code so that diffs stay readable).

    python notebooks/make_notebooks.py [OUT_DIR]      # default: beside this script

The notebooks are written without outputs and with fixed cell ids, so running this again
changes nothing unless a cell did; tests/test_notebooks.py checks that they are current.

Charts use matplotlib: it draws offline, into static PNGs that the notebook keeps in its
outputs (shown on GitHub and by `jupyter execute --inplace`, checked by the tests), and
pandas plots with it directly. Interactive libraries (plotly, bokeh, altair) render in the
browser from JavaScript, which a headless run, a saved notebook or GitHub does not show.
"""

from __future__ import annotations

import sys
from pathlib import Path
from textwrap import dedent

import nbformat

KERNEL = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(dedent(text).strip())


def code(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(dedent(text).strip())


def notebook(stem: str, cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    for index, cell in enumerate(cells):
        cell.id = f"{stem}-{index}"  # fixed ids: a regenerated notebook is byte-identical
    return nbformat.v4.new_notebook(cells=cells, metadata=KERNEL)


QUICKSTART = [
    md("""
        # ado-ray quickstart

        Run a command over a few repositories from a notebook, then look at the run with
        pandas and matplotlib. This makes three throw-away repositories and a tiny agent
        script in a temporary directory, so it runs from any working directory; point
        `Batch` at your own repository list (a file path, or a list of lines) for real work.
        While it runs, the Ray dashboard shows one `ado:<repo>` task per repository.
    """),
    code("""
        import subprocess, sys, tempfile
        from pathlib import Path

        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
        from ado_ray import Batch, load_runs, load_tasks

        %matplotlib inline

        root = Path(tempfile.mkdtemp(prefix='ado-notebook-'))
        sources = {
            'alpha': "print('alpha')\\n",
            'beta': "print('beta')\\n",
            'gamma': "# SPDX-License-Identifier: MIT\\nprint('gamma')\\n",  # has one already
        }
        for name, text in sources.items():
            repo = root / name
            repo.mkdir()
            (repo / 'main.py').write_text(text)
            for args in (['init', '-q', '-b', 'main'], ['add', '-A'],
                         ['-c', 'user.name=nb', '-c', 'user.email=nb@example.com',
                          'commit', '-qm', 'init']):
                subprocess.run(['git', *args], cwd=repo, check=True)
        sorted(p.name for p in root.iterdir())
    """),
    md("""
        The agent is any command. It runs in each repository's own checkout, so give a
        script by its absolute path. This one adds an SPDX license header to every Python
        file that lacks one (`examples/add_spdx_header.py` in the repository is the full
        version); `{license}` comes from the `license=MIT` on each repository's line.
    """),
    code('''
        agent = root / 'add_header.py'
        agent.write_text("""
        import pathlib, sys
        for path in sorted(pathlib.Path('.').glob('*.py')):
            text = path.read_text()
            if 'SPDX-License-Identifier:' not in text:
                path.write_text(f'# SPDX-License-Identifier: {sys.argv[1]}\\\\n' + text)
        """)
        batch = Batch(
            [f'{root / name} license=MIT' for name in sources],
            cmd=f'{sys.executable} {agent} {{license}}',
            parallel=2,
            name='notebook-demo',
            state=str(root / 'state.db'),
            work_root=str(root / 'work'),
        )
        [repo.name for repo in batch.plan()]
    '''),
    code("""
        result = batch.run()
        result.counts
    """),
    code("""
        tasks = load_tasks(result.run.run_id, state=str(root / 'state.db'))
        tasks[['name', 'state', 'agent_s', 'diffstat', 'commit', 'where']]
    """),
    md("""
        `state` is a category listing every task state, so counting it shows the states
        that did not occur as 0.
    """),
    code("""
        fig, (states, seconds) = plt.subplots(1, 2, figsize=(10, 3.5))
        tasks['state'].value_counts(sort=False).plot.bar(ax=states, title='tasks per state')
        states.yaxis.set_major_locator(MaxNLocator(integer=True))
        tasks.plot.barh(x='name', y='agent_s', ax=seconds, legend=False,
                        title='agent time per repository')
        seconds.set_xlabel('seconds')
        seconds.set_ylabel('')
        fig.tight_layout()
        plt.show()
    """),
    md("""
        `load_runs` has a column for every task state, 0 where a run had none (here
        `failed`), so the same code works for every run.
    """),
    code("""
        load_runs(state=str(root / 'state.db'))[
            ['run_id', 'name', 'created_at', 'status', 'tasks', 'changed', 'no_change', 'failed']
        ]
    """),
]

EXPLORE = [
    md("""
        # Exploring past runs

        Charts over the runs in a state store, built on `load_runs` and `load_tasks`:
        how long agents take, what they cost per provider and access mode, and which
        failures happen when.

        Set `STATE` to your store (the `state` of your config: a SQLite path such as
        `'.ado/state.db'`, or a `postgresql://` URL). Left as `None`, the notebook first
        makes a sample history in a temporary directory.
    """),
    code("""
        STATE = None  # e.g. '/home/me/project/.ado/state.db'
        RUNS = 50  # the newest runs to look at
    """),
    md("""
        ## A sample history

        Only when `STATE` is `None`. Ten throw-away repositories, two runs over them with
        the real `claude` adapter, routing and limiter, but with a stand-in for the Claude
        Code CLI: it prints the same stream-json events and follows `.sample.json` in each
        repository (edit a file, report an error, hang until the timeout, be refused by
        the API). Two providers: `claude` with a `subscription` mode that runs one agent at
        a time and an `api` mode behind it, and a cheaper `haiku` after both.
    """),
    code('''
        import json, subprocess, sys, tempfile
        from pathlib import Path

        from ado_ray import Batch

        STAND_IN = """
        import json, pathlib, random, sys, time, uuid
        plan = json.loads(pathlib.Path('.sample.json').read_text())
        model = sys.argv[sys.argv.index('--model') + 1]
        price_in, price_out = {'claude-sonnet-4-5': (3, 15), 'claude-haiku-4-5': (1, 5)}[model]
        session = str(uuid.uuid4())
        def emit(**event):
            print(json.dumps(event), flush=True)
        emit(type='system', subtype='init', session_id=session, model=model)
        seconds = plan['seconds'] * random.uniform(0.6, 1.4)
        time.sleep(seconds if plan['outcome'] != 'hang' else 600)
        tokens_in = int(plan['tokens'] * random.uniform(0.7, 1.3))
        tokens_out = tokens_in // 8
        result = {
            'type': 'result', 'subtype': 'success', 'is_error': False, 'num_turns': 4,
            'result': 'done', 'session_id': session, 'duration_ms': int(seconds * 1000),
            'total_cost_usd': (tokens_in * price_in + tokens_out * price_out) / 1e6,
            'usage': {'input_tokens': tokens_in, 'output_tokens': tokens_out},
        }
        if plan['outcome'] == 'edit':
            with open('CHANGELOG.md', 'a') as changelog:
                changelog.write(f'- {sys.argv[2].strip()}\\\\n')
        elif plan['outcome'] == 'error':
            result.update(is_error=True, subtype='error_during_execution',
                          result='the test suite still fails after 4 turns')
        elif plan['outcome'] == 'refused':
            result.update(is_error=True, api_error_status=401, total_cost_usd=0.0,
                          result='API Error: 401 invalid x-api-key')
        elif plan['outcome'] == 'overloaded':
            result.update(is_error=True, api_error_status=529, api_error_type='overloaded_error',
                          result='API Error: 529 Overloaded', total_cost_usd=0.0)
        emit(**result)
        sys.exit(1 if result['is_error'] else 0)
        """

        # repository: (what its agent does, seconds, input tokens)
        SAMPLE = {
            'api': ('edit', 1.2, 40_000), 'web': ('edit', 0.8, 25_000),
            'billing': ('edit', 1.5, 60_000), 'docs': ('edit', 0.3, 8_000),
            'search': ('hang', 0, 0), 'mobile': ('error', 1.0, 30_000),
            'payments': ('edit', 2.0, 80_000), 'legacy': ('refused', 0.1, 0),
            'reports': ('overloaded', 0.2, 0), 'infra': ('edit', 0.6, 15_000),
        }


        def make_sample(root):
            cli = root / 'claude'
            cli.write_text(f'#!{sys.executable}\\n' + STAND_IN)
            cli.chmod(0o755)
            for name, (outcome, seconds, tokens) in SAMPLE.items():
                repo = root / 'repos' / name
                repo.mkdir(parents=True)
                plan = {'outcome': outcome, 'seconds': seconds, 'tokens': tokens}
                (repo / '.sample.json').write_text(json.dumps(plan))
                (repo / 'CHANGELOG.md').write_text('# Changes\\n')
                for args in (['init', '-q', '-b', 'main'], ['add', '-A'],
                             ['-c', 'user.name=nb', '-c', 'user.email=nb@example.com',
                              'commit', '-qm', 'init']):
                    subprocess.run(['git', *args], cwd=repo, check=True)
            providers = {
                'claude': {'agent': 'claude', 'cmd': str(cli), 'model': 'claude-sonnet-4-5',
                           'modes': [{'name': 'subscription', 'priority': 1},
                                     {'name': 'api', 'priority': 2}]},
                'haiku': {'agent': 'claude', 'cmd': str(cli), 'model': 'claude-haiku-4-5',
                          'modes': [{'name': 'api', 'priority': 3}]},
            }
            limits = {'claude:subscription': {'concurrency': 1}, 'claude:api': {'concurrency': 1}}
            for number, prompt in enumerate(['Note the Python 3.13 upgrade in CHANGELOG.md',
                                             'Note the new logging format in CHANGELOG.md']):
                Batch(
                    [str(root / 'repos' / name) for name in SAMPLE],
                    agent={'name': 'claude', 'prompt': prompt, 'timeout_s': 4},
                    providers=providers, limits=limits, parallel=3,
                    name=f'sample-{number + 1}',
                    state=str(root / 'state.db'), work_root=str(root / 'work'),
                ).run()
            return str(root / 'state.db')


        if STATE is None:
            STATE = make_sample(Path(tempfile.mkdtemp(prefix='ado-explore-')))
    '''),
    md("""
        ## Runs and tasks

        One row per run, with a column for every task state; then every task of those
        runs, one row per repository and run.
    """),
    code("""
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
        from ado_ray import load_runs, load_tasks

        %matplotlib inline

        runs = load_runs(state=STATE, limit=RUNS)
        tasks = load_tasks(runs['run_id'], state=STATE)
        runs[['run_id', 'name', 'created_at', 'status', 'tasks', 'changed', 'no_change', 'failed']]
    """),
    code("""
        tasks[['run_id', 'name', 'state', 'failure_class', 'provider', 'mode', 'agent_s',
               'cost_usd', 'input_tokens', 'output_tokens', 'finished_at']]
    """),
    md("""
        ## How long agents take

        `agent_s` is the time a task's agent processes ran, retries included; tasks that
        never started one are left out.
    """),
    code("""
        ran = tasks[tasks['attempts'] > 0]
        ax = ran['agent_s'].plot.hist(bins=min(20, max(5, len(ran) // 2)), figsize=(7, 3.5),
                                      title='agent time per task')
        ax.set_xlabel('seconds')
        ax.set_ylabel('tasks')
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        plt.show()
    """),
    md("""
        ## What it cost, per provider and mode

        A task counts under the provider and mode of its last agent run (a task that
        failed over is counted once); `ado report` splits every run's usage by mode.
    """),
    code("""
        by_mode = (
            ran.assign(route=ran['provider'].fillna('?') + ' (' + ran['mode'].fillna('?') + ')')
            .groupby('route')[['cost_usd', 'input_tokens', 'output_tokens']]
            .sum()
        )
        ax = by_mode['cost_usd'].plot.bar(figsize=(7, 3.5), rot=0,
                                          title='cost per provider (mode)')
        ax.set_xlabel('')
        ax.set_ylabel('US$')
        plt.show()
        by_mode
    """),
    md("""
        ## Failures over time, by class

        Failed tasks counted as they finished (`finished_at`), one line per failure
        class, so a class that suddenly climbs (`rate_limited`, `infra`) stands out.
    """),
    code("""
        failed = tasks[tasks['state'] == 'failed']
        over_time = (
            failed.pivot_table(index='finished_at', columns='failure_class', values='task_id',
                               aggfunc='count', observed=True)
            .fillna(0)
            .cumsum()
        )
        fig, ax = plt.subplots(figsize=(8, 3.5))
        if over_time.empty:
            ax.text(0.5, 0.5, 'no failures', ha='center', va='center', transform=ax.transAxes)
        else:
            over_time.plot(ax=ax, drawstyle='steps-post', marker='o')
        ax.set_title('failed tasks so far, by failure class')
        ax.set_xlabel('finished at (UTC)')
        ax.set_ylabel('tasks')
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        plt.show()
        failed.groupby('failure_class', observed=False).size().rename('tasks').to_frame()
    """),
]


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    for stem, cells in (("quickstart", QUICKSTART), ("explore_runs", EXPLORE)):
        nbformat.write(notebook(stem, cells), out / f"{stem}.ipynb")


if __name__ == "__main__":
    main()
