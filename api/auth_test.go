package api_test

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"google.golang.org/api/option"

	"github.com/predworker/predworker/api"
	"github.com/predworker/predworker/api/googleid"
)

// issuer signs ID tokens with a local RSA key and serves its JWKS; the
// validator's HTTP client is pointed at it, so no network is used.
type issuer struct {
	key, other *rsa.PrivateKey
	verifier   *googleid.Verifier
}

// redirect sends every request (Google's certs URL included) to the local server.
type redirect struct{ to *url.URL }

func (rt redirect) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.URL.Scheme, r.URL.Host = rt.to.Scheme, rt.to.Host
	return http.DefaultTransport.RoundTrip(r)
}

func newIssuer(t *testing.T) *issuer {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "k1",
		"n": b64(key.N.Bytes()), "e": b64(big.NewInt(int64(key.E)).Bytes()),
	}}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(jwks)
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	v, err := googleid.New(t.Context(), option.WithHTTPClient(&http.Client{Transport: redirect{u}}))
	if err != nil {
		t.Fatal(err)
	}
	return &issuer{key: key, other: other, verifier: v}
}

func (is *issuer) token(t *testing.T, claims map[string]any, signer *rsa.PrivateKey) string {
	t.Helper()
	b64 := base64.RawURLEncoding.EncodeToString
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": "k1", "typ": "JWT"})
	c, _ := json.Marshal(claims)
	signed := b64(h) + "." + b64(c)
	sum := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, signer, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signed + "." + b64(sig)
}

const (
	pushAudience = "https://predworker.example/pubsub/push"
	pushSA       = "pubsub-push@proj.iam.gserviceaccount.com"
	opsAudience  = "https://predworker.example"
	opsUser      = "oncall@example.com"
)

func claims(aud, email string, verified bool, exp time.Time) map[string]any {
	return map[string]any{"iss": "https://accounts.google.com", "aud": aud, "email": email,
		"email_verified": verified, "exp": exp.Unix(), "iat": time.Now().Unix(), "sub": "1234"}
}

func TestPushOIDC(t *testing.T) {
	t.Parallel()
	is := newIssuer(t)
	f := setupWith(t, fixtureOpts{auth: api.Auth{Verifier: is.verifier,
		Push: &api.OIDCPolicy{Audience: pushAudience, Emails: []string{pushSA}}}})
	hour := time.Now().Add(time.Hour)
	wrongIss := claims(pushAudience, pushSA, true, hour)
	wrongIss["iss"] = "https://evil.example"
	for _, c := range []struct {
		name   string
		token  string
		status int
	}{
		{"good token", is.token(t, claims(pushAudience, pushSA, true, hour), is.key), 204},
		{"no token", "", 401},
		{"wrong audience", is.token(t, claims("https://other", pushSA, true, hour), is.key), 401},
		{"wrong issuer", is.token(t, wrongIss, is.key), 401},
		{"wrong email", is.token(t, claims(pushAudience, "intruder@proj.iam.gserviceaccount.com", true, hour), is.key), 403},
		{"unverified email", is.token(t, claims(pushAudience, pushSA, false, hour), is.key), 403},
		{"expired", is.token(t, claims(pushAudience, pushSA, true, time.Now().Add(-time.Minute)), is.key), 401},
		{"bad signature", is.token(t, claims(pushAudience, pushSA, true, hour), is.other), 401},
		{"garbage", "not.a.jwt", 401},
	} {
		auth := ""
		if c.token != "" {
			auth = "Bearer " + c.token
		}
		body := envelope("a-"+c.name, `{"batch_id": "auth", "game_date": "2025-01-15", "players": ["x"]}`, 0, nil)
		if got := statusWithAuth(t, "POST", f.srv.URL+"/pubsub/push", body, auth); got != c.status {
			t.Errorf("%s: %d, want %d", c.name, got, c.status)
		}
	}
	// Health stays open.
	if resp, _ := do(t, "GET", f.srv.URL+"/health", "", ""); resp.StatusCode != 200 {
		t.Errorf("/health = %d", resp.StatusCode)
	}
}

func TestOperatorAuth(t *testing.T) {
	t.Parallel()
	is := newIssuer(t)
	f := setupWith(t, fixtureOpts{auth: api.Auth{Verifier: is.verifier, OperatorTokens: []string{"s3cret-token", "n3xt-s3cret-token"},
		Operator: &api.OIDCPolicy{Audience: opsAudience, Emails: []string{opsUser}}}})
	hour := time.Now().Add(time.Hour)
	for _, c := range []struct {
		name   string
		auth   string
		status int
	}{
		{"static token", "Bearer s3cret-token", 200},
		{"the other static token (rotation)", "Bearer n3xt-s3cret-token", 200},
		{"a prefix of a token", "Bearer s3cret-tok", 401},
		{"oidc identity", "Bearer " + is.token(t, claims(opsAudience, opsUser, true, hour), is.key), 200},
		{"none", "", 401},
		{"wrong static token", "Bearer s3cret-tokeX", 401},
		{"wrong identity", "Bearer " + is.token(t, claims(opsAudience, "stranger@example.com", true, hour), is.key), 403},
		{"basic auth", "Basic dXNlcjpwYXNz", 401},
	} {
		if got := statusWithAuth(t, "GET", f.srv.URL+"/v1/batches", "", c.auth); got != c.status {
			t.Errorf("%s: %d, want %d", c.name, got, c.status)
		}
	}
	if got := statusWithAuth(t, "GET", f.srv.URL+"/v1/doctor", "", ""); got != 401 {
		t.Errorf("doctor without credentials = %d, want 401", got)
	}
	for _, p := range []string{"/health", "/ready", "/metrics"} {
		if resp, _ := do(t, "GET", f.srv.URL+p, "", ""); resp.StatusCode != 200 {
			t.Errorf("%s without credentials = %d, want 200", p, resp.StatusCode)
		}
	}
}

// statusWithAuth sends a request with an optional Authorization header and
// returns the status code.
func statusWithAuth(t *testing.T, method, url, body, auth string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, stringsReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}
