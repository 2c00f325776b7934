{{/* Names ------------------------------------------------------------------------------------- */}}

{{- define "pillars.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name: "<release>" when it already contains the chart name. */}}
{{- define "pillars.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pillars.mlflow.fullname" -}}{{ include "pillars.fullname" . }}-mlflow{{- end }}
{{- define "pillars.postgresql.fullname" -}}{{ include "pillars.fullname" . }}-postgresql{{- end }}
{{- define "pillars.trigger.fullname" -}}{{ include "pillars.fullname" . }}-trigger{{- end }}
{{- define "pillars.models.serviceAccount" -}}{{ include "pillars.fullname" . }}-models{{- end }}
{{/* Secrets: MLflow credentials (keys username, password, flask-secret-key) and the model-server token. */}}
{{- define "pillars.mlflow.authSecret" -}}
{{- default (printf "%s-mlflow-auth" (include "pillars.fullname" .)) .Values.mlflow.auth.existingSecret }}
{{- end }}
{{- define "pillars.serving.tokenSecret" -}}
{{- default (printf "%s-serving-token" (include "pillars.fullname" .)) .Values.kserve.auth.existingSecret }}
{{- end }}
{{- define "pillars.pipelineRunner.serviceAccount" -}}
{{- default (printf "%s-pipeline-runner" (include "pillars.fullname" .)) .Values.pipelineRunner.name }}
{{- end }}

{{/* In-cluster URL of the MLflow Service (what pipelines and model servers use). */}}
{{- define "pillars.mlflow.url" -}}
http://{{ include "pillars.mlflow.fullname" . }}.{{ .Release.Namespace }}.svc.cluster.local:{{ .Values.mlflow.port }}
{{- end }}

{{/* Labels ------------------------------------------------------------------------------------ */}}

{{- define "pillars.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pillars.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pillars.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "pillars.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pillars
{{- end }}

{{/* Labels of one component: include "pillars.componentLabels" (list $ "mlflow") */}}
{{- define "pillars.componentLabels" -}}
{{ include "pillars.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "pillars.componentSelector" -}}
{{ include "pillars.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Images ------------------------------------------------------------------------------------ */}}

{{- define "pillars.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* The serving image, derived from the one image value: `<repository><servingSuffix>:<tag>`;
     include "pillars.servingImage" (list $ true) for the CUDA variant (`<tag><cudaSuffix>`). */}}
{{- define "pillars.servingImage" -}}
{{- $root := index . 0 }}
{{- $tag := default $root.Chart.AppVersion $root.Values.image.tag }}
{{- if index . 1 }}{{ $tag = printf "%s%s" $tag $root.Values.image.cudaSuffix }}{{ end }}
{{- $root.Values.image.repository }}{{ $root.Values.image.servingSuffix }}:{{ $tag }}
{{- end }}

{{/* Security ---------------------------------------------------------------------------------- */}}

{{/* Pod security context: non-root, RuntimeDefault seccomp. Argument: the UID. */}}
{{- define "pillars.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "pillars.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* KServe ------------------------------------------------------------------------------------ */}}

{{/* The deployment-mode annotation value the configured KServe version understands.
     Argument: (list $ "Knative"|"Standard"). */}}
{{- define "pillars.kserve.modeName" -}}
{{- $root := index . 0 }}
{{- $mode := index . 1 }}
{{- $modern := semverCompare ">=0.15.0-0" (printf "%s" $root.Values.kserve.version | trimPrefix "v" | include "pillars.semver") }}
{{- if eq $mode "Knative" }}{{ ternary "Knative" "Serverless" $modern }}
{{- else if eq $mode "Standard" }}{{ ternary "Standard" "RawDeployment" $modern }}
{{- else }}{{ fail (printf "kserve.deploymentMode must be Knative or Standard, got %q" $mode) }}
{{- end }}
{{- end }}

{{/* "0.15" -> "0.15.0" so semverCompare accepts short versions. */}}
{{- define "pillars.semver" -}}
{{- if regexMatch "^[0-9]+\\.[0-9]+$" . }}{{ . }}.0{{ else }}{{ . }}{{ end }}
{{- end }}

{{/* The registered model a `models` entry serves: `registeredModel`, else NAME of models:/NAME@alias
     or models:/NAME/VERSION, else the entry's name. */}}
{{- define "pillars.registeredModel" -}}
{{- if .registeredModel }}{{ .registeredModel }}
{{- else if hasPrefix "models:/" .uri }}{{ regexReplaceAll "[@/].*$" (trimPrefix "models:/" .uri) "" }}
{{- else }}{{ .name }}
{{- end }}
{{- end }}

{{/* A registered model name as a label value (<= 63 characters of [A-Za-z0-9_.-], alphanumeric at
     both ends; other characters become "_"); the annotation keeps the exact name. */}}
{{- define "pillars.labelValue" -}}
{{- regexReplaceAll "[^A-Za-z0-9_.-]" . "_" | trunc 63 | trimAll "_.-" }}
{{- end }}

{{/* MLflow credentials as client environment variables (nothing when MLflow auth is off). */}}
{{- define "pillars.mlflow.clientEnv" -}}
{{- if .Values.mlflow.auth.enabled }}
- name: MLFLOW_TRACKING_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ include "pillars.mlflow.authSecret" . }}, key: username}
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ include "pillars.mlflow.authSecret" . }}, key: password}
{{- end }}
{{- end }}

{{/* Where deployed models must land to fall under this release's NetworkPolicy, PodMonitor and
     ServiceAccount: read by `pillars deploy` and the deploy step (components/settings.py). */}}
{{- define "pillars.platformEnv" -}}
- {name: PILLARS_RELEASE, value: {{ .Release.Name | quote }}}
- {name: PILLARS_APP_NAME, value: {{ include "pillars.name" . | quote }}}
- {name: PILLARS_NAMESPACE, value: {{ .Release.Namespace | quote }}}
- {name: PILLARS_MODELS_SERVICE_ACCOUNT, value: {{ include "pillars.models.serviceAccount" . | quote }}}
- {name: PILLARS_CLUSTER_MLFLOW_URI, value: {{ include "pillars.mlflow.url" . | quote }}}
- {name: PILLARS_IMAGE, value: {{ include "pillars.image" . | quote }}}
{{- if .Values.mlflow.auth.enabled }}
- {name: PILLARS_MLFLOW_SECRET_NAME, value: {{ include "pillars.mlflow.authSecret" . | quote }}}
{{- end }}
{{- if .Values.sparkOperator.enabled }}
{{- /* The data step's SparkApplication (spark_launcher=operator; components/data/spark_application.py). */}}
- {name: PILLARS_SPARK_SERVICE_ACCOUNT, value: {{ include "pillars.spark.serviceAccount" . | quote }}}
{{- with .Values.sparkOperator.image }}
- {name: PILLARS_SPARK_IMAGE, value: {{ . | quote }}}
{{- end }}
{{- with .Values.sparkOperator.workUri }}
- {name: PILLARS_SPARK_WORK_URI, value: {{ . | quote }}}
{{- end }}
{{- with .Values.sparkOperator.s3.existingSecret }}
- {name: PILLARS_SPARK_S3_SECRET, value: {{ . | quote }}}
{{- end }}
{{- with .Values.sparkOperator.s3.endpointUrl }}
- {name: PILLARS_SPARK_S3_ENDPOINT, value: {{ . | quote }}}
{{- end }}
{{- end }}
{{- end }}

{{/* The Spark drivers' ServiceAccount (sparkOperator.serviceAccount, default <fullname>-spark). */}}
{{- define "pillars.spark.serviceAccount" -}}
{{- .Values.sparkOperator.serviceAccount | default (printf "%s-spark" (include "pillars.fullname" .)) }}
{{- end }}

{{/* True ("true") when a model URI is read from the MLflow registry rather than storage. */}}
{{- define "pillars.isRegistryUri" -}}
{{- if or (hasPrefix "models:/" .) (hasPrefix "runs:/" .) }}true{{ end }}
{{- end }}

{{/* Default KEDA query: in-flight requests per replica of one model (Pillars serving metrics
     count requests; the rate of requests times latency approximates concurrency). */}}
{{- define "pillars.keda.defaultQuery" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 -}}
sum(rate(pillars_serving_request_seconds_sum{namespace="{{ $root.Release.Namespace }}",model="{{ $name }}"}[1m]))
{{- end }}

{{/* NetworkPolicy ----------------------------------------------------------------------------- */}}

{{/* Peers allowed in: the listed namespaces, or any namespace when the list is empty. */}}
{{- define "pillars.np.peers" -}}
{{- if . }}
{{- range . }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ . }}
{{- end }}
{{- else }}
- namespaceSelector: {}
{{- end }}
{{- end }}
{{/* One peer from a {namespaceSelector, podSelector} value (both label maps; empty: any). */}}
{{- define "pillars.np.selectedPeer" -}}
- namespaceSelector:
    {{- with .namespaceSelector }}
    matchLabels:
      {{- toYaml . | nindent 6 }}
    {{- else }} {}
    {{- end }}
  podSelector:
    {{- with .podSelector }}
    matchLabels:
      {{- toYaml . | nindent 6 }}
    {{- else }} {}
    {{- end }}
{{- end }}
{{/* Egress to the S3 endpoint (CIDRs when given, else anywhere on the S3 ports). */}}
{{- define "pillars.np.s3" -}}
{{- $np := .Values.networkPolicy }}
- ports:
    {{- range $np.s3Ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
  {{- with $np.s3Cidrs }}
  to:
    {{- range . }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
  {{- end }}
{{- end }}

{{/*
Worker processes of a Pillars model server: (list resources gpu) -> the whole CPUs in resources.requests.cpu
("2", 2, "2500m", 1.5), at least 1; 1 with a GPU or without a CPU request.
*/}}
{{- define "pillars.workersForCpu" -}}
{{- $resources := index . 0 -}}
{{- $gpu := index . 1 -}}
{{- $cpu := toString (dig "requests" "cpu" "" $resources) -}}
{{- $millis := 1000 -}}
{{- if hasSuffix "m" $cpu -}}
{{- $millis = int (trimSuffix "m" $cpu) -}}
{{- else if $cpu -}}
{{- $millis = int (mulf (float64 $cpu) 1000) -}}
{{- end -}}
{{- if gt (int $gpu) 0 -}}1{{- else -}}{{ max 1 (div $millis 1000) }}{{- end -}}
{{- end }}

{{/* The model servers' S3 client for the feedback store (kserve.feedback.dir s3://...): endpoint, region and
  credentials from kserve.feedback.s3 (none when the store is not in object storage). */}}
{{- define "pillars.feedback.s3Env" -}}
{{- $f := .Values.kserve.feedback }}
{{- if hasPrefix "s3://" $f.dir }}
{{- with $f.s3.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: AWS_DEFAULT_REGION
  value: {{ $f.s3.region | quote }}
{{- with $f.s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: AWS_ACCESS_KEY_ID}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: AWS_SECRET_ACCESS_KEY}
{{- end }}
{{- end }}
{{- end }}
