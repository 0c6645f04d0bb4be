package deploy

import (
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// composeFile is the subset of the Compose specification these files use.
// Decoding is strict, so a key outside it (often a typo) fails the test.
type composeFile struct {
	Name     string                    `json:"name"`
	Services map[string]composeService `json:"services"`
}

type composeService struct {
	Image           string                    `json:"image"`
	Command         []string                  `json:"command"`
	Environment     map[string]string         `json:"environment"`
	Ports           []string                  `json:"ports"`
	Expose          []string                  `json:"expose"`
	DependsOn       map[string]composeDepends `json:"depends_on"`
	Networks        []string                  `json:"networks"`
	Restart         string                    `json:"restart"`
	StopGracePeriod string                    `json:"stop_grace_period"`
	ReadOnly        bool                      `json:"read_only"`
	CapDrop         []string                  `json:"cap_drop"`
	SecurityOpt     []string                  `json:"security_opt"`
	Healthcheck     map[string]any            `json:"healthcheck"`
	Tmpfs           []string                  `json:"tmpfs"`
	Deploy          map[string]map[string]any `json:"deploy"`
	Labels          map[string]string         `json:"labels"`
}

type composeDepends struct {
	Condition string `json:"condition"`
}

func loadCompose(t *testing.T, path string) composeFile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f composeFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(f.Services) == 0 {
		t.Fatalf("%s: no services", path)
	}
	return f
}

// checkSweeperServices checks every service running the sweeper image: its
// command and environment are the binary's, it is hardened like the
// Kubernetes manifests, and a daemon's ops port is the one it exposes.
func checkSweeperServices(t *testing.T, path string, f composeFile) {
	t.Helper()
	n := 0
	for name, s := range f.Services {
		if !isSweeperImage(s.Image) {
			continue
		}
		n++
		where := path + " service " + name
		env := make([]string, 0, len(s.Environment))
		for k := range s.Environment {
			env = append(env, k)
		}
		checkInvocation(t, where, s.Command, env)
		if !s.ReadOnly || !slices.Equal(s.CapDrop, []string{"ALL"}) || !slices.Contains(s.SecurityOpt, "no-new-privileges:true") {
			t.Errorf("%s: want read_only, cap_drop [ALL] and no-new-privileges like the Kubernetes manifests", where)
		}
		if len(s.Command) > 0 && s.Command[0] == "run" {
			port := opsPort(t, s.Environment["SWEEPER_OPS_ADDR"])
			published := slices.ContainsFunc(s.Ports, func(p string) bool {
				return strings.HasSuffix(p, ":"+port) || p == port
			})
			if !published && !slices.Contains(s.Expose, port) {
				t.Errorf("%s: neither ports %v nor expose %v reach the ops port %s", where, s.Ports, s.Expose, port)
			}
		}
	}
	if n == 0 {
		t.Errorf("%s: no service runs the tasker-sweeper image", path)
	}
}

func TestComposeStandalone(t *testing.T) {
	const path = "compose.yaml"
	f := loadCompose(t, path)
	checkSweeperServices(t, path, f)

	pg, migrate, sweeper := f.Services["postgres"], f.Services["migrate"], f.Services["sweeper"]
	if pg.Image == "" || migrate.Image == "" || sweeper.Image == "" {
		t.Fatalf("%s: want services postgres, migrate and sweeper", path)
	}
	if !slices.Equal(migrate.Command, []string{"migrate", "--tasker-schema"}) {
		t.Errorf("%s: migrate runs %v, want migrate --tasker-schema (a standalone database)", path, migrate.Command)
	}
	if len(sweeper.Command) == 0 || sweeper.Command[0] != "run" {
		t.Errorf("%s: sweeper runs %v, want run", path, sweeper.Command)
	}
	if c := migrate.DependsOn["postgres"].Condition; c != "service_healthy" {
		t.Errorf("%s: migrate waits for postgres %q, want service_healthy", path, c)
	}
	if c := sweeper.DependsOn["migrate"].Condition; c != "service_completed_successfully" {
		t.Errorf("%s: sweeper waits for migrate %q, want service_completed_successfully", path, c)
	}
	if pg.Healthcheck == nil {
		t.Errorf("%s: postgres has no healthcheck for service_healthy to wait on", path)
	}

	// Both sweeper services reach the compose PostgreSQL with its own
	// credentials.
	for _, name := range []string{"migrate", "sweeper"} {
		raw := f.Services[name].Environment["DATABASE_URL"]
		u, err := url.Parse(raw)
		if err != nil {
			t.Errorf("%s: %s DATABASE_URL %q: %v", path, name, raw, err)
			continue
		}
		pass, _ := u.User.Password()
		if u.Hostname() != "postgres" || u.User.Username() != pg.Environment["POSTGRES_USER"] ||
			pass != pg.Environment["POSTGRES_PASSWORD"] || strings.TrimPrefix(u.Path, "/") != pg.Environment["POSTGRES_DB"] {
			t.Errorf("%s: %s DATABASE_URL %q does not match the postgres service", path, name, raw)
		}
	}
}

// tasker-core's production compose file (docker/docker-compose.prod.yml)
// gives the orchestration service this DATABASE_URL, on this network.
const (
	taskerProdDatabaseURL = "postgresql://${POSTGRES_USER:-tasker}:${POSTGRES_PASSWORD}@postgres:5432/tasker_production"
	taskerProdNetwork     = "tasker-prod"
)

func TestComposeTaskerProdOverride(t *testing.T) {
	const path = "compose.tasker-prod.override.yaml"
	f := loadCompose(t, path)
	checkSweeperServices(t, path, f)

	for name, s := range f.Services {
		if name == "postgres" || name == "orchestration" || name == "worker" {
			t.Errorf("%s: redefines tasker-core's service %s", path, name)
		}
		if !isSweeperImage(s.Image) {
			t.Errorf("%s: service %s does not run the sweeper", path, name)
		}
		if !slices.Equal(s.Networks, []string{taskerProdNetwork}) {
			t.Errorf("%s: %s is on networks %v, want [%s]", path, name, s.Networks, taskerProdNetwork)
		}
		if got := s.Environment["DATABASE_URL"]; got != taskerProdDatabaseURL {
			t.Errorf("%s: %s DATABASE_URL %q, want the orchestrator's %q", path, name, got, taskerProdDatabaseURL)
		}
		if slices.Contains(s.Command, "--tasker-schema") {
			t.Errorf("%s: %s passes --tasker-schema: never on the orchestrator's database", path, name)
		}
	}
	var migrateName string
	for name, s := range f.Services {
		if len(s.Command) > 0 && s.Command[0] == "migrate" {
			migrateName = name
			if c := s.DependsOn["orchestration"].Condition; c != "service_healthy" {
				t.Errorf("%s: %s waits for orchestration %q, want service_healthy (it runs tasker's migrations)", path, name, c)
			}
		}
	}
	if migrateName == "" {
		t.Fatalf("%s: no service runs sweeper migrate", path)
	}
	for name, s := range f.Services {
		if len(s.Command) > 0 && s.Command[0] == "run" {
			if c := s.DependsOn[migrateName].Condition; c != "service_completed_successfully" {
				t.Errorf("%s: %s waits for %s %q, want service_completed_successfully", path, name, migrateName, c)
			}
		}
	}
}
