#!/usr/bin/env bash
# Records, and later compares, what a run may not change in the working tree: the output
# of `git status` (tracked files modified, added or deleted, untracked files that are not
# ignored) and the permission bits of every tracked file (git records only the
# executable bit, so a `chmod 600` on a committed file shows nowhere else).
#
#   scripts/tree-state.sh save FILE    write the current state to FILE
#   scripts/tree-state.sh check FILE   exit 1, printing the difference, when the tree's
#                                      state is no longer the one saved in FILE
#
# scripts/test.sh and scripts/demo.sh save the state before their run and check it
# after: neither may leave the tree different from how it found it. Local edits made
# before the run are fine (they are in the saved state too). Outside a git checkout
# (a source tarball) there is nothing to compare and both commands do nothing.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

usage() {
  printf 'usage: %s save|check FILE\n' "$0" >&2
  exit 64
}
(($# == 2)) || usage
command="$1"
file="$2"

state() {
  git status --porcelain=v1 --untracked-files=all --ignore-submodules=none
  printf -- '-- modes of tracked files --\n'
  git ls-files -z | while IFS= read -r -d '' path; do
    # A tracked file that was deleted is already in git status above.
    [[ -e "$path" || -L "$path" ]] && stat -c '%a %n' -- "$path"
  done
  return 0
}

if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  exit 0
fi

case "$command" in
  save)
    state >"$file"
    ;;
  check)
    [[ -f "$file" ]] || { printf 'tree-state: no saved state at %s\n' "$file" >&2; exit 1; }
    if ! difference="$(diff -u --label before --label after "$file" <(state))"; then
      printf 'tree-state: the run changed the working tree (-before +after):\n%s\n' \
        "$difference" >&2
      printf 'tree-state: a run must not rewrite, add or chmod files outside ignored folders\n' >&2
      exit 1
    fi
    ;;
  *)
    usage
    ;;
esac
