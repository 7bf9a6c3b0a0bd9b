// Package deploy_test checks the deployment files against the code: the
// Cloud Run service definition parses and its probes and port match what the
// binary serves, deploy/setup.sh runs end to end against stand-ins for gcloud
// and bq whose every call is checked against the installed CLI
// (setup_test.go), and the Dockerfile's own build command produces a static
// binary that starts and answers /health.
package deploy_test

import (
	"debug/elf"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

type probe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port int    `yaml:"port"`
	} `yaml:"httpGet"`
}

type service struct {
	Spec struct {
		Template struct {
			Metadata struct {
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"metadata"`
			Spec struct {
				TimeoutSeconds       int    `yaml:"timeoutSeconds"`
				ContainerConcurrency int    `yaml:"containerConcurrency"`
				ServiceAccountName   string `yaml:"serviceAccountName"`
				Containers           []struct {
					Name  string `yaml:"name"`
					Image string `yaml:"image"`
					Ports []struct {
						ContainerPort int `yaml:"containerPort"`
					} `yaml:"ports"`
					Env []struct {
						Name  string `yaml:"name"`
						Value string `yaml:"value"`
					} `yaml:"env"`
					StartupProbe  probe `yaml:"startupProbe"`
					LivenessProbe probe `yaml:"livenessProbe"`
				} `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
		Traffic []struct {
			LatestRevision bool `yaml:"latestRevision"`
			Percent        int  `yaml:"percent"`
		} `yaml:"traffic"`
	} `yaml:"spec"`
}

// configVariables reads the environment variable names the service knows
// from cmd/worker/config.go (the env tags).
func configVariables(t *testing.T) map[string]bool {
	t.Helper()
	vars := map[string]bool{}
	// The service's own settings, and the engine's it embeds.
	for _, file := range []string{"../cmd/worker/config.go", "../worker/config.go"} {
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`env:"([A-Z_]+)`).FindAllStringSubmatch(string(src), -1) {
			vars[m[1]] = true
		}
	}
	return vars
}

func TestServiceDefinitionMatchesTheCode(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("service.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var s service
	if err := yaml.Unmarshal(raw, &s); err != nil {
		t.Fatalf("service.yaml does not parse: %v", err)
	}
	spec := s.Spec.Template.Spec
	// The app, and the metrics collector that scrapes it.
	if len(spec.Containers) != 2 || spec.Containers[0].Name != "app" || spec.Containers[1].Name != "collector" ||
		!strings.Contains(spec.Containers[1].Image, "cloud-run-gmp-sidecar") {
		t.Fatalf("containers %+v, want the app and the Managed Prometheus collector", spec.Containers)
	}
	if !strings.Contains(s.Spec.Template.Metadata.Annotations["run.googleapis.com/container-dependencies"], `"collector":["app"]`) {
		t.Error("the collector does not wait for the app")
	}
	c := spec.Containers[0]
	// The binary listens on PORT, 8080 by default, and serves /ready and /health.
	if len(c.Ports) != 1 || c.Ports[0].ContainerPort != 8080 {
		t.Errorf("container port = %+v, want 8080 (the default PORT)", c.Ports)
	}
	if c.StartupProbe.HTTPGet.Path != "/ready" || c.StartupProbe.HTTPGet.Port != 8080 {
		t.Errorf("startup probe = %+v, want /ready on 8080", c.StartupProbe)
	}
	if c.LivenessProbe.HTTPGet.Path != "/health" || c.LivenessProbe.HTTPGet.Port != 8080 {
		t.Errorf("liveness probe = %+v, want /health on 8080", c.LivenessProbe)
	}
	routes, err := os.ReadFile("../api/api.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{c.StartupProbe.HTTPGet.Path, c.LivenessProbe.HTTPGet.Path} {
		if !strings.Contains(string(routes), fmt.Sprintf("r.Get(%q", p)) {
			t.Errorf("probe path %s is not a route of the api package", p)
		}
	}
	budget := 540
	known := configVariables(t)
	for _, e := range c.Env {
		if !known[e.Name] {
			t.Errorf("service.yaml sets %s, which the service does not read", e.Name)
		}
		if e.Name == "PUSH_BUDGET" {
			d, err := time.ParseDuration(e.Value)
			if err != nil {
				t.Fatal(err)
			}
			budget = int(d.Seconds())
		}
	}
	if spec.TimeoutSeconds < budget+30 || spec.TimeoutSeconds > 3600 {
		t.Errorf("request timeout %ds, want at least PUSH_BUDGET (%ds) plus a margin", spec.TimeoutSeconds, budget)
	}
	if spec.ContainerConcurrency < 1 || spec.ServiceAccountName == "" {
		t.Errorf("concurrency %d, service account %q", spec.ContainerConcurrency, spec.ServiceAccountName)
	}
	if s.Spec.Template.Metadata.Annotations["autoscaling.knative.dev/minScale"] == "" {
		t.Error("no min instances annotation")
	}
}

var flagRe = regexp.MustCompile(`^--([a-z_-]+)`)

// TestDockerfileBuildCommand runs the Dockerfile's own go build line (there
// is no Docker engine here) and checks that it yields a static binary that
// starts and answers /health.
func TestDockerfileBuildCommand(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := strings.ReplaceAll(string(raw), "\\\n", " ")
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "gcr.io/distroless/static", "USER nonroot", "BUILD_ID"} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	var build string
	for _, line := range strings.Split(df, "\n") {
		if strings.HasPrefix(line, "RUN ") && strings.Contains(line, "go build") {
			build = strings.TrimPrefix(line, "RUN ")
		}
	}
	if build == "" {
		t.Fatal("no go build line in the Dockerfile")
	}
	out := t.TempDir()
	build = strings.ReplaceAll(build, "/out/worker", filepath.Join(out, "worker"))
	build = strings.ReplaceAll(build, "${BUILD_ID}", "test-build")
	cmd := exec.Command("sh", "-c", build)
	cmd.Dir = ".."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", build, err, b)
	}
	bin := filepath.Join(out, "worker")
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has an ELF interpreter: not static")
		}
	}
	_ = f.Close()
	st, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("binary: %.1f MiB", float64(st.Size())/(1<<20))

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	run := exec.Command(bin) // no arguments: serve
	run.Env = append(os.Environ(), "PORT="+strconv.Itoa(port), "HOST=127.0.0.1", "DATA_DIR="+t.TempDir())
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = run.Process.Kill(); _ = run.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/health", port))
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("/health = %d", resp.StatusCode)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer on /health: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
