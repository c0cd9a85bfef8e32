{{/* Names and labels. */}}
{{- define "llm-gateway.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llm-gateway.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "llm-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: llm-gateway
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The pods that run a gateway: the shared Deployment's, or the agent's in sidecar mode. */}}
{{- define "llm-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ if eq .Values.mode "sidecar" }}{{ .Values.agent.name }}{{ else }}{{ include "llm-gateway.name" . }}{{ end }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "llm-gateway.redisName" -}}
{{- printf "%s-redis" (include "llm-gateway.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The gateway's config.yaml, built from the values (server block, upstreams, routes, state, metrics). */}}
{{- define "llm-gateway.config" -}}
{{- $workers := .Values.server.workers -}}
{{- if and (eq .Values.mode "sidecar") (kindIs "invalid" $workers) -}}
{{- $workers = 1 -}}{{/* a sidecar serves one agent pod: one worker unless told otherwise (docs/scaling.md) */}}
{{- end -}}
{{- $server := dict "host" "0.0.0.0" "port" (int .Values.server.port) "drain_s" .Values.server.drainSeconds "grace_s" .Values.server.graceSeconds "workers" $workers -}}
{{- $state := dict "backend" "memory" -}}
{{- if .Values.redis.deploy -}}
{{- $state = dict "backend" "redis" "redis_url" (printf "redis://%s:6379/0" (include "llm-gateway.redisName" .)) "timeout_ms" .Values.redis.timeoutMs -}}
{{- else if .Values.redis.url -}}
{{- $state = dict "backend" "redis" "redis_url" .Values.redis.url "timeout_ms" .Values.redis.timeoutMs -}}
{{- end -}}
{{- $metrics := dict "enabled" .Values.metrics.enabled -}}
{{- if .Values.metrics.enabled -}}
{{- $_ := set $metrics "port" (int .Values.metrics.port) -}}
{{- end -}}
{{- $cfg := dict "server" $server "upstreams" .Values.upstreams "routes" .Values.routes "auth" .Values.auth "state" $state "metrics" $metrics "ledger" (dict "sqlite_path" "/var/lib/gateway/usage.sqlite3") -}}
{{- $cfg = mustMergeOverwrite $cfg (deepCopy .Values.extraConfig) -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* preStop + grace + drain + margin (+ the agent's own shutdown in sidecar mode: the grace period is per pod). */}}
{{- define "llm-gateway.terminationGracePeriod" -}}
{{- $s := addf .Values.preStopSeconds .Values.server.graceSeconds .Values.server.drainSeconds .Values.terminationMarginSeconds -}}
{{- if eq .Values.mode "sidecar" -}}
{{- $s = addf $s .Values.agent.shutdownSeconds -}}
{{- end -}}
{{- ceil $s | int -}}
{{- end -}}

{{/* The gateway container; in sidecar mode it is an init container with restartPolicy: Always. */}}
{{- define "llm-gateway.container" -}}
- name: llm-gateway
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if eq .Values.mode "sidecar" }}
  restartPolicy: Always
  {{- end }}
  args: [serve, --config, /etc/gateway/config.yaml]
  ports:
    - name: gw-http
      containerPort: {{ int .Values.server.port }}
    {{- if .Values.metrics.enabled }}
    - name: gw-metrics
      containerPort: {{ int .Values.metrics.port }}
    {{- end }}
  {{- with .Values.secretEnv }}
  env:
    {{- range . }}
    - name: {{ .name }}
      valueFrom:
        secretKeyRef:
          name: {{ .secretName }}
          key: {{ .key }}
    {{- end }}
  {{- end }}
  startupProbe:
    httpGet: {path: /readyz, port: gw-http}
    periodSeconds: 1
    failureThreshold: 30
  readinessProbe:
    httpGet: {path: /readyz, port: gw-http}
    periodSeconds: 5
    failureThreshold: 2
  livenessProbe:
    httpGet: {path: /healthz, port: gw-http}
    periodSeconds: 10
    timeoutSeconds: 2
    failureThreshold: 3
  lifecycle:
    preStop:
      sleep:
        seconds: {{ int .Values.preStopSeconds }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: gateway-config
      mountPath: /etc/gateway
      readOnly: true
    - name: gateway-tmp
      mountPath: /tmp
    - name: gateway-data
      mountPath: /var/lib/gateway
{{- end -}}

{{- define "llm-gateway.volumes" -}}
- name: gateway-config
  configMap:
    name: {{ include "llm-gateway.fullname" . }}-config
- name: gateway-tmp
  emptyDir:
    sizeLimit: 64Mi
- name: gateway-data
  emptyDir:
    sizeLimit: 256Mi
{{- end -}}

{{- define "llm-gateway.podMeta" -}}
labels:
  {{- include "llm-gateway.selectorLabels" . | nindent 2 }}
  app.kubernetes.io/part-of: llm-gateway
  {{- with .Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- if or .Values.metrics.enabled .Values.podAnnotations }}
annotations:
  {{- if .Values.metrics.enabled }}
  prometheus.io/scrape: "true"
  prometheus.io/port: {{ .Values.metrics.port | int | quote }}
  prometheus.io/path: /metrics
  {{- end }}
  {{- with .Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "llm-gateway.podScheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
