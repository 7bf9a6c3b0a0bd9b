package api

import (
	"context"
	"crypto/subtle"
	"net/http"
	"slices"
	"strings"

	"github.com/predworker/predworker/logging"
)

// Claims are what a verified Google ID token says about its caller.
type Claims struct {
	Issuer        string
	Email         string
	EmailVerified bool
}

// TokenVerifier checks a Google-signed ID token's signature, expiry and
// audience, and returns its claims (api/googleid wraps Google's validator).
type TokenVerifier interface {
	Verify(ctx context.Context, token, audience string) (Claims, error)
}

// OIDCPolicy says which Google-signed identities may call.
type OIDCPolicy struct {
	Audience string   // the aud the token must carry
	Emails   []string // allowed principals (service accounts, users)
}

// Auth configures authentication. A nil policy (and an empty token) leaves
// that surface open; the service refuses to start that way on Cloud Run
// unless ALLOW_UNAUTHENTICATED=true.
type Auth struct {
	Verifier TokenVerifier
	// Push guards POST /pubsub/push: Pub/Sub's OIDC token.
	Push *OIDCPolicy
	// Operator guards /v1/*: an ID token of an allowed identity, or one of
	// OperatorTokens as a static bearer token (several while one replaces
	// another).
	Operator       *OIDCPolicy
	OperatorTokens []string
}

// staticToken reports whether token is one of the operator tokens, in time
// independent of where they differ.
func (a Auth) staticToken(token string) bool {
	ok := 0
	for _, t := range a.OperatorTokens {
		ok |= subtle.ConstantTimeCompare([]byte(token), []byte(t))
	}
	return token != "" && ok == 1
}

var googleIssuers = []string{"https://accounts.google.com", "accounts.google.com"}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "Bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

func unauthenticated(msg string) *Error {
	return &Error{Status: http.StatusUnauthorized, Code: CodeUnauthenticated, Message: msg}
}

// verify checks a bearer ID token against p. The verifier checks signature,
// expiry and audience; issuer, email and email_verified are checked here.
func (a *Auth) verify(ctx context.Context, token string, p *OIDCPolicy) *Error {
	if token == "" {
		return unauthenticated("a bearer token is required")
	}
	c, err := a.Verifier.Verify(ctx, token, p.Audience)
	if err != nil {
		return unauthenticated("the token is not valid")
	}
	if !slices.Contains(googleIssuers, c.Issuer) {
		return unauthenticated("the token was not issued by Google")
	}
	if c.Email == "" || !c.EmailVerified || !slices.Contains(p.Emails, c.Email) {
		return &Error{Status: http.StatusForbidden, Code: CodePermissionDenied, Message: "this identity may not call this endpoint"}
	}
	return nil
}

// requirePush guards the push endpoint.
func (s *Server) requirePush(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.auth.Push != nil {
			if ae := s.auth.verify(r.Context(), bearer(r), s.auth.Push); ae != nil {
				logging.FromContext(r.Context(), s.log).Warn("push refused", "code", ae.Code)
				s.writeError(w, r, ae)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// requireOperator guards the operator API.
func (s *Server) requireOperator(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.auth.Operator == nil && len(s.auth.OperatorTokens) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		token := bearer(r)
		if s.auth.staticToken(token) {
			next.ServeHTTP(w, r)
			return
		}
		var ae *Error
		switch {
		case s.auth.Operator != nil:
			ae = s.auth.verify(r.Context(), token, s.auth.Operator)
		case token == "":
			ae = unauthenticated("a bearer token is required")
		default:
			ae = unauthenticated("the token is not valid")
		}
		if ae != nil {
			logging.FromContext(r.Context(), s.log).Warn("operator request refused", "code", ae.Code)
			s.writeError(w, r, ae)
			return
		}
		next.ServeHTTP(w, r)
	})
}
