#!/usr/bin/env bash
# End-to-end test of the sweeper image: builds it, then runs it the way the
# Kubernetes manifests do (uid 65532, read-only root, no capabilities, no new
# privileges) against a throwaway PostgreSQL on this machine's loopback:
#
#   1. `version` (the binary says what it is),
#   2. `migrate --tasker-schema` (config from $DATABASE_URL, as in the Secret),
#   3. `once --json` moves the due steps seeded with psql, and they are pending,
#   4. `run` answers /healthz and /readyz and serves /metrics on the ops port,
#      and exits 0 on SIGTERM.
#
# Needs podman + runc (apt-get install podman runc), the PostgreSQL server
# binaries and psql, curl. Runs as root (initdb/postgres then run as the
# `postgres` user) or as an ordinary user. IMAGE=... skips the build and
# tests that image.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
ENGINE=${ENGINE:-podman}
engine() { "$ENGINE" --runtime runc "$@"; }

fail() {
	echo "image-test: FAIL: $*" >&2
	exit 1
}
step() { echo "image-test: $*" >&2; }

# --- cleanup: every resource below registers itself here -------------------
cleanups=()
cleanup() {
	local i
	for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do
		eval "${cleanups[i]}" >/dev/null 2>&1 || true
	done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the image ---------------------------------------------------------------
if [[ -z ${IMAGE:-} ]]; then
	IMAGE=$("$here/build-image.sh" | tail -n1)
fi
size=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
step "image $IMAGE: $((size / 1024 / 1024)) MiB ($size bytes)"
user=$("$ENGINE" image inspect --format '{{.Config.User}}' "$IMAGE")
[[ $user == 65532:65532 ]] || fail "image user is '$user', want 65532:65532"

# Run a container the way the manifests' securityContext does.
hardened=(--network host --user 65532:65532 --read-only --cap-drop ALL
	--security-opt no-new-privileges)

# --- 1. version ----------------------------------------------------------------
help=$(engine run --rm "${hardened[@]}" "$IMAGE" help) || fail "sweeper help failed"
if grep -qE '^[[:space:]]+version[[:space:]]' <<<"$help"; then
	out=$(engine run --rm "${hardened[@]}" "$IMAGE" version) || fail "sweeper version failed"
	[[ -n $out ]] || fail "sweeper version printed nothing"
	step "version: $out"
else
	# The binary has no version command yet: say so loudly, prove the image
	# runs at all.
	step "WARNING: this binary has no 'version' command; ran 'help' instead"
fi

# --- a throwaway PostgreSQL ----------------------------------------------------
pg_bin=${PG_BIN:-}
if [[ -z $pg_bin ]]; then
	if command -v pg_config >/dev/null && [[ -x $(pg_config --bindir)/postgres ]]; then
		pg_bin=$(pg_config --bindir)
	else
		pg_bin=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1)
	fi
fi
[[ -x $pg_bin/initdb && -x $pg_bin/pg_ctl ]] || fail "no PostgreSQL server binaries (set PG_BIN)"
command -v psql >/dev/null || fail "psql not found"

as_pg() {
	if [[ $(id -u) == 0 ]]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}
parent=/dev/shm
[[ -d $parent && -w $parent ]] || parent=${TMPDIR:-/tmp}
pgroot=$(mktemp -d "$parent/sweeper-image-test-XXXXXX")
cleanups+=("rm -rf '$pgroot'")
[[ $(id -u) == 0 ]] && chown postgres: "$pgroot"
as_pg "$pg_bin/initdb" -D "$pgroot/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$pgroot/initdb.log" 2>&1 ||
	fail "initdb: $(tail -n5 "$pgroot/initdb.log")"

pg_port=
for _ in 1 2 3 4 5; do
	port=$((20000 + RANDOM % 40000))
	if as_pg "$pg_bin/pg_ctl" -D "$pgroot/data" -l "$pgroot/server.log" -w -t 60 \
		-o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$pgroot -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
		start >/dev/null 2>&1; then
		pg_port=$port
		break
	fi
done
[[ -n $pg_port ]] || fail "postgres did not start: $(tail -n5 "$pgroot/server.log")"
cleanups+=("as_pg '$pg_bin/pg_ctl' -D '$pgroot/data' -m immediate stop")
db_url="postgres://postgres@127.0.0.1:$pg_port/postgres?sslmode=disable"
step "postgres on 127.0.0.1:$pg_port"
sql() { psql "$db_url" -X -q -v ON_ERROR_STOP=1 -At "$@"; }

# --- 2. migrate --------------------------------------------------------------
engine run --rm "${hardened[@]}" -e DATABASE_URL="$db_url" -e SWEEPER_LOG_FORMAT=json \
	"$IMAGE" migrate --tasker-schema || fail "migrate --tasker-schema failed"
[[ $(sql -c "SELECT count(*) FROM pg_namespace WHERE nspname IN ('tasker', 'tasker_sweeper')") == 2 ]] ||
	fail "migrate did not create the tasker and tasker_sweeper schemas"
step "migrate --tasker-schema: ok"

# --- 3. once --json ---------------------------------------------------------
# Three waiting_for_retry steps whose backoff expired an hour ago, written
# the way the orchestrator writes them (five transitions each).
sql <<'SQL'
WITH ns AS (
    INSERT INTO tasker.task_namespaces (name, created_at, updated_at)
    VALUES ('image-test', now(), now()) RETURNING task_namespace_uuid
), nt AS (
    INSERT INTO tasker.named_tasks (task_namespace_uuid, name, created_at, updated_at)
    SELECT task_namespace_uuid, 'image-test', now(), now() FROM ns RETURNING named_task_uuid
), task AS (
    INSERT INTO tasker.tasks (named_task_uuid, requested_at, identity_hash, created_at, updated_at, correlation_id)
    SELECT named_task_uuid, now(), 'image-test', now(), now(), gen_random_uuid() FROM nt
    RETURNING task_uuid
), named AS (
    INSERT INTO tasker.named_steps (name, created_at, updated_at)
    SELECT 'image-test-' || g, now(), now() FROM generate_series(1, 3) g
    RETURNING named_step_uuid
), steps AS (
    INSERT INTO tasker.workflow_steps (task_uuid, named_step_uuid, attempts, last_attempted_at,
                                       backoff_request_seconds, created_at, updated_at)
    SELECT task.task_uuid, named.named_step_uuid, 1, now() - interval '1 hour', 1, now(), now()
    FROM task, named
    RETURNING workflow_step_uuid
)
INSERT INTO tasker.workflow_step_transitions
    (workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at)
SELECT s.workflow_step_uuid, h.to_state, h.from_state, '{}', h.sort_key, h.sort_key = 5, now(), now()
FROM steps s
CROSS JOIN (VALUES (1, 'pending', NULL), (2, 'enqueued', 'pending'), (3, 'in_progress', 'enqueued'),
                   (4, 'enqueued_as_error_for_orchestration', 'in_progress'),
                   (5, 'waiting_for_retry', 'enqueued_as_error_for_orchestration')) AS h(sort_key, to_state, from_state);
SQL
summary=$(engine run --rm "${hardened[@]}" -e DATABASE_URL="$db_url" -e SWEEPER_LOG_FORMAT=json \
	"$IMAGE" once --json) || fail "once --json failed: $summary"
step "once --json: $summary"
grep -qE '"transitioned":[[:space:]]*3([,}])' <<<"$summary" || fail "once did not move the 3 due steps"
grep -qE '"path":[[:space:]]*"schedule"' <<<"$summary" || fail "once did not use the schedule path"
pending=$(sql -c "SELECT count(*) FROM tasker.workflow_step_transitions
                  WHERE most_recent AND to_state = 'pending' AND metadata ? 'sweep_id'")
[[ $pending == 3 ]] || fail "$pending steps are pending after once, want 3"

# --- 4. run ------------------------------------------------------------------------
# Loopback ports of our own: --network host shares this machine's ports with
# whatever else runs here.
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
}
ops_port=$(free_port)
admin_port=$(free_port)
run_help=$(engine run --rm "${hardened[@]}" "$IMAGE" run -h) || fail "run -h failed"
probe_port=$ops_port
if grep -q -- '-ops-addr' <<<"$run_help"; then
	has_ops=1
else
	has_ops=0
	probe_port=$admin_port
	step "WARNING: this binary has no --ops-addr; probing the admin port instead"
fi
name=sweeper-image-test-$$
engine run -d --name "$name" "${hardened[@]}" \
	-e DATABASE_URL="$db_url" -e SWEEPER_LOG_FORMAT=json -e SWEEPER_SCHEDULE='@every 1s' \
	-e SWEEPER_OPS_ADDR="127.0.0.1:$ops_port" -e SWEEPER_HTTP_ADDR="127.0.0.1:$admin_port" \
	"$IMAGE" run >/dev/null || fail "could not start run"
cleanups+=("'$ENGINE' --runtime runc rm -f '$name'")

code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$probe_port$1" || true; }
deadline=$((SECONDS + 60))
until [[ $(code /readyz) == 200 ]]; do
	if [[ $("$ENGINE" inspect --format '{{.State.Running}}' "$name") != true ]]; then
		"$ENGINE" logs "$name" >&2 || true
		fail "run exited before /readyz answered 200"
	fi
	if ((SECONDS > deadline)); then
		"$ENGINE" logs "$name" >&2 || true
		fail "/readyz did not answer 200 within 60s"
	fi
	sleep 0.2
done
step "run: /readyz 200 on 127.0.0.1:$probe_port"
[[ $(code /healthz) == 200 ]] || fail "/healthz is not 200"
metrics=$(curl -sf --max-time 5 "http://127.0.0.1:$probe_port/metrics") || fail "/metrics failed"
grep -q '^tasker_sweeper_database_up 1' <<<"$metrics" || fail "/metrics lacks tasker_sweeper_database_up 1"
if ((has_ops)); then
	# The ops listener serves nothing of the admin API.
	[[ $(code /v1/status) == 404 ]] || fail "the ops port serves /v1/status"
	grep -q '^tasker_sweeper_build_info{' <<<"$metrics" || fail "/metrics lacks tasker_sweeper_build_info"
	grep -q '^tasker_sweeper_ready 1' <<<"$metrics" || fail "/metrics lacks tasker_sweeper_ready 1"
fi

"$ENGINE" stop -t 30 "$name" >/dev/null
status=$("$ENGINE" inspect --format '{{.State.ExitCode}}' "$name")
[[ $status == 0 ]] || {
	"$ENGINE" logs "$name" >&2 || true
	fail "run exited $status after SIGTERM, want 0"
}
step "run: exit 0 after SIGTERM"
echo "image-test: PASS ($IMAGE, $((size / 1024 / 1024)) MiB)"
