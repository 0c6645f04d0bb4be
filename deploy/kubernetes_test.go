package deploy

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"
)

// decodeStrict reads a one-document manifest into out, refusing unknown
// and duplicate fields: a misspelt or misplaced field fails here instead of
// being dropped silently by the API server's defaulting.
func decodeStrict(t *testing.T, path string, out any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if docs := regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1); len(docs) > 1 {
		t.Fatalf("%s: %d YAML documents, want one", path, len(docs))
	}
	if err := yaml.UnmarshalStrict(data, out); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func kube(name string) string { return filepath.Join("kubernetes", name) }

func loadDeployment(t *testing.T) *appsv1.Deployment {
	t.Helper()
	var d appsv1.Deployment
	decodeStrict(t, kube("sidecar.yaml"), &d)
	if d.APIVersion != "apps/v1" || d.Kind != "Deployment" {
		t.Fatalf("sidecar.yaml is %s %s, want apps/v1 Deployment", d.APIVersion, d.Kind)
	}
	return &d
}

func loadJob(t *testing.T) *batchv1.Job {
	t.Helper()
	var j batchv1.Job
	decodeStrict(t, kube("migrate-job.yaml"), &j)
	if j.APIVersion != "batch/v1" || j.Kind != "Job" {
		t.Fatalf("migrate-job.yaml is %s %s, want batch/v1 Job", j.APIVersion, j.Kind)
	}
	return &j
}

func loadCronJob(t *testing.T) *batchv1.CronJob {
	t.Helper()
	var c batchv1.CronJob
	decodeStrict(t, kube("once-cronjob.yaml"), &c)
	if c.APIVersion != "batch/v1" || c.Kind != "CronJob" {
		t.Fatalf("once-cronjob.yaml is %s %s, want batch/v1 CronJob", c.APIVersion, c.Kind)
	}
	return &c
}

func loadSecret(t *testing.T) *corev1.Secret {
	t.Helper()
	var s corev1.Secret
	decodeStrict(t, kube("secret.example.yaml"), &s)
	if s.APIVersion != "v1" || s.Kind != "Secret" {
		t.Fatalf("secret.example.yaml is %s %s, want v1 Secret", s.APIVersion, s.Kind)
	}
	return &s
}

// podSpecs are the pod templates of every manifest, by file name.
func podSpecs(t *testing.T) map[string]*corev1.PodSpec {
	t.Helper()
	return map[string]*corev1.PodSpec{
		"sidecar.yaml":      &loadDeployment(t).Spec.Template.Spec,
		"migrate-job.yaml":  &loadJob(t).Spec.Template.Spec,
		"once-cronjob.yaml": &loadCronJob(t).Spec.JobTemplate.Spec.Template.Spec,
	}
}

func isSweeperImage(image string) bool { return strings.HasPrefix(image, "tasker-sweeper") }

// sweeperContainer is the one container of spec running the sweeper image.
func sweeperContainer(t *testing.T, file string, spec *corev1.PodSpec) *corev1.Container {
	t.Helper()
	var found *corev1.Container
	for i := range spec.Containers {
		if isSweeperImage(spec.Containers[i].Image) {
			if found != nil {
				t.Fatalf("%s: more than one sweeper container", file)
			}
			found = &spec.Containers[i]
		}
	}
	for _, c := range spec.InitContainers {
		if isSweeperImage(c.Image) {
			t.Fatalf("%s: the sweeper runs as an init container; the tests expect a container", file)
		}
	}
	if found == nil {
		t.Fatalf("%s: no container runs the tasker-sweeper image", file)
	}
	return found
}

func envValue(c *corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

func TestManifestsDecodeStrictly(t *testing.T) {
	// Each loader decodes strictly and checks apiVersion and kind.
	if d := loadDeployment(t); d.Name == "" {
		t.Error("sidecar.yaml: the Deployment has no name")
	}
	if j := loadJob(t); j.Name == "" {
		t.Error("migrate-job.yaml: the Job has no name")
	}
	if c := loadCronJob(t); c.Name == "" {
		t.Error("once-cronjob.yaml: the CronJob has no name")
	}
	if s := loadSecret(t); s.Name == "" || len(s.StringData) == 0 {
		t.Error("secret.example.yaml: the Secret has no name or no stringData")
	}
	// And strictness is real: an unknown field fails.
	var d appsv1.Deployment
	if err := yaml.UnmarshalStrict([]byte("apiVersion: apps/v1\nkind: Deployment\nspec:\n  replica: 2\n"), &d); err == nil {
		t.Error("UnmarshalStrict accepted an unknown field")
	}
}

func TestSweeperInvocations(t *testing.T) {
	for file, spec := range podSpecs(t) {
		c := sweeperContainer(t, file, spec)
		if len(c.Command) > 0 {
			t.Errorf("%s: the sweeper container overrides the image's entrypoint (%v); set args only", file, c.Command)
		}
		if len(c.EnvFrom) > 0 {
			t.Errorf("%s: the sweeper container uses envFrom: name every variable, so this test can check it", file)
		}
		names := make([]string, 0, len(c.Env))
		for _, e := range c.Env {
			names = append(names, e.Name)
		}
		checkInvocation(t, file+" container "+c.Name, c.Args, names)
	}
	if args := sweeperContainer(t, "sidecar.yaml", podSpecs(t)["sidecar.yaml"]).Args; len(args) == 0 || args[0] != "run" {
		t.Errorf("sidecar.yaml: the sweeper runs %v, want run", args)
	}
}

func TestSecurityContexts(t *testing.T) {
	for file, spec := range podSpecs(t) {
		c := sweeperContainer(t, file, spec)
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("%s: the sweeper container has no securityContext", file)
			continue
		}
		check := func(what string, ok bool) {
			if !ok {
				t.Errorf("%s: sweeper securityContext: want %s", file, what)
			}
		}
		check("runAsNonRoot: true", sc.RunAsNonRoot != nil && *sc.RunAsNonRoot)
		check("runAsUser: 65532", sc.RunAsUser != nil && *sc.RunAsUser == 65532)
		check("runAsGroup: 65532", sc.RunAsGroup != nil && *sc.RunAsGroup == 65532)
		check("readOnlyRootFilesystem: true", sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem)
		check("allowPrivilegeEscalation: false", sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation)
		check("privileged unset or false", sc.Privileged == nil || !*sc.Privileged)
		check("capabilities: drop [ALL], add none", sc.Capabilities != nil && len(sc.Capabilities.Add) == 0 &&
			len(sc.Capabilities.Drop) == 1 && sc.Capabilities.Drop[0] == "ALL")
		seccomp := sc.SeccompProfile
		if seccomp == nil && spec.SecurityContext != nil {
			seccomp = spec.SecurityContext.SeccompProfile
		}
		check("seccompProfile: RuntimeDefault", seccomp != nil && seccomp.Type == corev1.SeccompProfileTypeRuntimeDefault)
	}
}

// peakRSS is the sweeper's measured peak RSS sweeping a 1,000,000-step
// backlog (BENCHMARKS.md, memory scenario: 22.3 MiB), rounded up; rssTarget
// is that benchmark's pass mark. A memory limit under the target could
// OOM-kill a sweeper that meets its own benchmark.
var (
	peakRSS   = resource.MustParse("23Mi")
	rssTarget = resource.MustParse("64Mi")
)

func TestResources(t *testing.T) {
	for file, spec := range podSpecs(t) {
		c := sweeperContainer(t, file, spec)
		req, lim := c.Resources.Requests, c.Resources.Limits
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			rq, okReq := req[r]
			lm, okLim := lim[r]
			if !okReq || !okLim {
				t.Errorf("%s: sweeper %s needs a request and a limit", file, r)
				continue
			}
			if rq.Cmp(lm) > 0 {
				t.Errorf("%s: sweeper %s request %s exceeds its limit %s", file, r, rq.String(), lm.String())
			}
		}
		if m := req[corev1.ResourceMemory]; m.Cmp(peakRSS) < 0 {
			t.Errorf("%s: memory request %s is under the measured peak RSS %s", file, m.String(), peakRSS.String())
		}
		if m := lim[corev1.ResourceMemory]; m.Cmp(rssTarget) < 0 {
			t.Errorf("%s: memory limit %s is under the benchmark's RSS target %s", file, m.String(), rssTarget.String())
		}
	}
}

func TestSidecarProbesAndPorts(t *testing.T) {
	d := loadDeployment(t)
	spec := &d.Spec.Template.Spec
	c := sweeperContainer(t, "sidecar.yaml", spec)
	addr, _ := envValue(c, "SWEEPER_OPS_ADDR")
	port := opsPort(t, addr)

	var ops *corev1.ContainerPort
	for i := range c.Ports {
		p := &c.Ports[i]
		if p.Name == "ops" {
			ops = p
		} else if strconv.Itoa(int(p.ContainerPort)) != port {
			t.Errorf("sidecar.yaml: the sweeper declares port %s (%d): only the ops listener is meant to be reached", p.Name, p.ContainerPort)
		}
	}
	if ops == nil {
		t.Fatal("sidecar.yaml: the sweeper has no container port named ops")
	}
	if strconv.Itoa(int(ops.ContainerPort)) != port {
		t.Errorf("sidecar.yaml: port ops is %d, the ops listener is on %s", ops.ContainerPort, port)
	}

	probe := func(what string, p *corev1.Probe, path string) {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("sidecar.yaml: the sweeper needs an HTTP %s probe", what)
			return
		}
		if p.HTTPGet.Path != path {
			t.Errorf("sidecar.yaml: %s probe path %q, want %q", what, p.HTTPGet.Path, path)
		}
		switch pp := p.HTTPGet.Port; {
		case pp.StrVal != "":
			if pp.StrVal != "ops" {
				t.Errorf("sidecar.yaml: %s probe on port %q, want ops", what, pp.StrVal)
			}
		case strconv.Itoa(int(pp.IntVal)) != port:
			t.Errorf("sidecar.yaml: %s probe on port %d, want the ops port %s", what, pp.IntVal, port)
		}
	}
	probe("liveness", c.LivenessProbe, "/healthz")
	probe("readiness", c.ReadinessProbe, "/readyz")

	ann := d.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != port || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("sidecar.yaml: scrape annotations %v, want scrape true, port %s, path /metrics", ann, port)
	}

	// The admin API moves and fails steps and takes no token on loopback:
	// it must stay on the pod's loopback.
	httpAddr, ok := envValue(c, "SWEEPER_HTTP_ADDR")
	if !ok {
		httpAddr = helpOf(t, "run").flags["http-addr"].defValue
	}
	host, _, err := net.SplitHostPort(httpAddr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		t.Errorf("sidecar.yaml: admin API on %q, want a loopback address", httpAddr)
	}
}

func TestSidecarShutdown(t *testing.T) {
	d := loadDeployment(t)
	c := sweeperContainer(t, "sidecar.yaml", &d.Spec.Template.Spec)
	grace := 30 * time.Second // the binary's default
	if v, ok := envValue(c, "SWEEPER_SHUTDOWN_GRACE"); ok {
		var err error
		if grace, err = time.ParseDuration(v); err != nil {
			t.Fatalf("SWEEPER_SHUTDOWN_GRACE %q: %v", v, err)
		}
	}
	period := int64(30)
	if p := d.Spec.Template.Spec.TerminationGracePeriodSeconds; p != nil {
		period = *p
	}
	// The daemon needs its grace plus about a second to exit.
	if time.Duration(period)*time.Second < grace+5*time.Second {
		t.Errorf("terminationGracePeriodSeconds %d leaves no room after SWEEPER_SHUTDOWN_GRACE %s", period, grace)
	}
}

func TestSecretReferences(t *testing.T) {
	secret := loadSecret(t)
	for file, spec := range podSpecs(t) {
		for _, c := range spec.Containers {
			for _, e := range c.Env {
				if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
					continue
				}
				ref := e.ValueFrom.SecretKeyRef
				if ref.Name != secret.Name {
					t.Errorf("%s: %s/%s reads Secret %q, the example is %q", file, c.Name, e.Name, ref.Name, secret.Name)
				}
				if _, ok := secret.StringData[ref.Key]; !ok {
					t.Errorf("%s: %s/%s reads key %q, missing from secret.example.yaml", file, c.Name, e.Name, ref.Key)
				}
			}
		}
	}

	// The orchestrator reads DATABASE_URL and TASKER_ENV from the Secret, and
	// the sweeper beside it the same DATABASE_URL.
	spec := podSpecs(t)["sidecar.yaml"]
	refOf := func(c *corev1.Container, name string) *corev1.SecretKeySelector {
		for _, e := range c.Env {
			if e.Name == name && e.ValueFrom != nil {
				return e.ValueFrom.SecretKeyRef
			}
		}
		return nil
	}
	var orch *corev1.Container
	for i := range spec.Containers {
		if spec.Containers[i].Image == "tasker-orchestration" {
			orch = &spec.Containers[i]
		}
	}
	if orch == nil {
		t.Fatal("sidecar.yaml: no container runs the tasker-orchestration image")
	}
	for _, name := range []string{"DATABASE_URL", "TASKER_ENV"} {
		if refOf(orch, name) == nil {
			t.Errorf("sidecar.yaml: the orchestrator's %s does not come from the Secret", name)
		}
	}
	sw := sweeperContainer(t, "sidecar.yaml", spec)
	if o, s := refOf(orch, "DATABASE_URL"), refOf(sw, "DATABASE_URL"); s == nil || o == nil || *s != *o {
		t.Errorf("sidecar.yaml: the sweeper's DATABASE_URL (%v) is not the orchestrator's (%v)", s, o)
	}
	for _, e := range sw.Env {
		if e.Name == "DATABASE_URL" || e.Name == "SWEEPER_ADMIN_TOKEN" {
			if e.Value != "" || e.ValueFrom == nil {
				t.Errorf("sidecar.yaml: the sweeper's %s is written inline, want a Secret reference", e.Name)
			}
		}
	}
}

func TestMigrateJob(t *testing.T) {
	j := loadJob(t)
	c := sweeperContainer(t, "migrate-job.yaml", &j.Spec.Template.Spec)
	if len(c.Args) == 0 || c.Args[0] != "migrate" {
		t.Errorf("migrate-job.yaml runs %v, want migrate", c.Args)
	}
	for _, a := range c.Args {
		if strings.TrimLeft(a, "-") == "tasker-schema" {
			t.Error("migrate-job.yaml passes --tasker-schema: never on an orchestrator's database")
		}
	}
	if j.Spec.BackoffLimit == nil {
		t.Error("migrate-job.yaml: no backoffLimit")
	}
	if rp := j.Spec.Template.Spec.RestartPolicy; rp != corev1.RestartPolicyNever && rp != corev1.RestartPolicyOnFailure {
		t.Errorf("migrate-job.yaml: restartPolicy %q, want Never or OnFailure", rp)
	}
}

func TestOnceCronJob(t *testing.T) {
	cj := loadCronJob(t)
	if cj.Spec.ConcurrencyPolicy != batchv1.ForbidConcurrent {
		t.Errorf("once-cronjob.yaml: concurrencyPolicy %q, want Forbid", cj.Spec.ConcurrencyPolicy)
	}
	if cj.Spec.JobTemplate.Spec.BackoffLimit == nil {
		t.Error("once-cronjob.yaml: no backoffLimit")
	}
	if fields := strings.Fields(cj.Spec.Schedule); len(fields) != 5 {
		t.Errorf("once-cronjob.yaml: schedule %q is not a 5-field cron expression", cj.Spec.Schedule)
	}
	c := sweeperContainer(t, "once-cronjob.yaml", &cj.Spec.JobTemplate.Spec.Template.Spec)
	if len(c.Args) == 0 || c.Args[0] != "once" {
		t.Errorf("once-cronjob.yaml runs %v, want once", c.Args)
	}
	if rp := cj.Spec.JobTemplate.Spec.Template.Spec.RestartPolicy; rp != corev1.RestartPolicyNever && rp != corev1.RestartPolicyOnFailure {
		t.Errorf("once-cronjob.yaml: restartPolicy %q, want Never or OnFailure", rp)
	}
}

func TestContainerfile(t *testing.T) {
	data, err := os.ReadFile("Containerfile")
	if err != nil {
		t.Fatal(err)
	}
	var from, user, entrypoint, cmd string
	var expose []string
	for _, line := range bytes.Split(data, []byte("\n")) {
		fields := strings.Fields(string(line))
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		rest := strings.TrimSpace(strings.TrimPrefix(string(line), fields[0]))
		switch strings.ToUpper(fields[0]) {
		case "FROM":
			from = rest
		case "USER":
			user = rest
		case "EXPOSE":
			expose = append(expose, fields[1:]...)
		case "ENTRYPOINT":
			entrypoint = rest
		case "CMD":
			cmd = rest
		}
	}
	if from != "scratch" {
		t.Errorf("Containerfile: FROM %q, want scratch (no registry needed)", from)
	}
	if user != "65532:65532" {
		t.Errorf("Containerfile: USER %q, want 65532:65532", user)
	}
	if entrypoint != `["/sweeper"]` || cmd != `["run"]` {
		t.Errorf("Containerfile: ENTRYPOINT %s CMD %s, want [\"/sweeper\"] [\"run\"]", entrypoint, cmd)
	}
	if port := opsPort(t, ""); len(expose) != 1 || strings.TrimSuffix(expose[0], "/tcp") != port {
		t.Errorf("Containerfile: EXPOSE %v, want the ops port %s only", expose, port)
	}
	passwd, err := os.ReadFile(filepath.Join("image", "passwd"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^[a-z]+:x:65532:65532:`).Match(passwd) {
		t.Error("image/passwd names no user 65532")
	}
}
