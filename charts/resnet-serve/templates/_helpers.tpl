{{/* Chart name, truncated to 63 characters (the DNS label limit). */}}
{{- define "resnet-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 63 characters. If the release name already
contains the chart name, it is used as is.
*/}}
{{- define "resnet-serve.fullname" -}}
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

{{/* Name of a companion object: the full name with a suffix, within 63 characters. */}}
{{- define "resnet-serve.componentName" -}}
{{- $suffix := index . 1 }}
{{- printf "%s-%s" (include "resnet-serve.fullname" (index . 0) | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{/* Chart name and version, as used by the helm.sh/chart label. */}}
{{- define "resnet-serve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "resnet-serve.labels" -}}
helm.sh/chart: {{ include "resnet-serve.chart" . }}
{{ include "resnet-serve.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: resnet-serve
{{- end }}

{{/* Selector labels shared by every component of the release. */}}
{{- define "resnet-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "resnet-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of the model server. The component label keeps the server's selector
from matching the in-chart Redis pods.
*/}}
{{- define "resnet-serve.serverSelectorLabels" -}}
{{ include "resnet-serve.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/* Selector labels of the in-chart Redis. */}}
{{- define "resnet-serve.redisSelectorLabels" -}}
{{ include "resnet-serve.selectorLabels" . }}
app.kubernetes.io/component: redis
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "resnet-serve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "resnet-serve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference: digest wins over tag; an empty tag is appVersion (+ "-cpu" without GPUs). */}}
{{- define "resnet-serve.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- $tag := .Values.image.tag | default (printf "%s%s" .Chart.AppVersion (ternary "" "-cpu" .Values.gpu.enabled)) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Folder of the Keras cache ($KERAS_HOME) for the weights source. */}}
{{- define "resnet-serve.kerasHome" -}}
{{- if eq .Values.weights.source "image" }}/opt/keras{{ else }}/var/lib/resnet-serve/weights{{ end }}
{{- end }}

{{/* SERVE_WEIGHTS: a file under $KERAS_HOME, or the ImageNet weights from the Keras cache. */}}
{{- define "resnet-serve.serveWeights" -}}
{{- if .Values.weights.file }}
{{- printf "%s/%s" (include "resnet-serve.kerasHome" .) (trimPrefix "/" .Values.weights.file) }}
{{- else }}imagenet{{ end }}
{{- end }}

{{/* Name of the in-chart Redis objects. */}}
{{- define "resnet-serve.redisName" -}}
{{ include "resnet-serve.componentName" (list . "redis") }}
{{- end }}

{{/*
A Kubernetes quantity of bytes (the sizeLimit forms the schema allows: a number, then Ki, Mi,
Gi, Ti, k, M, G or T) in MiB, rounded up: the chart adds sizes in MiB.
*/}}
{{- define "resnet-serve.mib" -}}
{{- $q := toString . }}
{{- $n := regexFind "^[0-9]+" $q | int64 }}
{{- $unit := regexFind "[A-Za-z]+$" $q }}
{{- $bytes := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 }}
{{- if not (hasKey $bytes $unit) }}
{{- fail (printf "%q is not a size the chart can add up" $q) }}
{{- end }}
{{- div (add (mul $n (get $bytes $unit)) 1048575) 1048576 }}
{{- end }}

{{/*
The server container's ephemeral-storage request: its disk-backed emptyDirs (/tmp, the kernel
cache, downloaded weights), which the kubelet counts against the pod, plus
ephemeralStorageExtra for the logs and the writable layer.
*/}}
{{- define "resnet-serve.ephemeralStorage" -}}
{{- $mib := add (include "resnet-serve.mib" .Values.tmpSizeLimit) (include "resnet-serve.mib" .Values.ephemeralStorageExtra) }}
{{- if eq .Values.kernelCache.type "emptyDir" }}
{{- $mib = add $mib (include "resnet-serve.mib" .Values.kernelCache.sizeLimit) }}
{{- end }}
{{- if eq .Values.weights.source "url" }}
{{- $mib = add $mib (include "resnet-serve.mib" .Values.weights.url.sizeLimit) }}
{{- end }}
{{- printf "%dMi" (int64 $mib) }}
{{- end }}

{{/* Where the kernel cache volume is mounted: CUDA's and XLA's caches are folders in it. */}}
{{- define "resnet-serve.kernelCacheDir" -}}
/var/cache/resnet-serve
{{- end }}

{{/* The image of the helm test pod: tests.image, or the server's when its repository is empty. */}}
{{- define "resnet-serve.testImage" -}}
{{- if .Values.tests.image.repository }}
{{- printf "%s:%s" .Values.tests.image.repository .Values.tests.image.tag }}
{{- else }}
{{- include "resnet-serve.image" . }}
{{- end }}
{{- end }}

{{/*
API versions by the cluster's Kubernetes version (.Capabilities.KubeVersion: the server's on
install, --kube-version with `helm template`), as bitnami's common.capabilities.* helpers pick
them: one template serves 1.20 through the newest. autoscaling/v2 is 1.23+ (v2beta2 before,
same fields); policy/v1 PodDisruptionBudget is 1.21+ (v1beta1 before, same fields).
*/}}
{{- define "resnet-serve.capabilities.hpa.apiVersion" -}}
{{- if semverCompare "<1.23-0" .Capabilities.KubeVersion.Version }}autoscaling/v2beta2{{ else }}autoscaling/v2{{ end }}
{{- end }}

{{- define "resnet-serve.capabilities.pdb.apiVersion" -}}
{{- if semverCompare "<1.21-0" .Capabilities.KubeVersion.Version }}policy/v1beta1{{ else }}policy/v1{{ end }}
{{- end }}

{{/* Native gRPC probes: Kubernetes 1.24+ (beta, on by default). */}}
{{- define "resnet-serve.capabilities.grpcProbes" -}}
{{- if semverCompare ">=1.24-0" .Capabilities.KubeVersion.Version }}true{{ end }}
{{- end }}

{{/* progressDeadlineSeconds: the value, or the startup budget plus 1200 s (node provisioning, image pull). */}}
{{- define "resnet-serve.progressDeadlineSeconds" -}}
{{- if .Values.progressDeadlineSeconds }}{{ .Values.progressDeadlineSeconds }}
{{- else }}{{ add (mul .Values.probes.startup.periodSeconds .Values.probes.startup.failureThreshold) 1200 }}
{{- end }}
{{- end }}

{{/* The fewest server pods that run: replicaCount, or autoscaling.minReplicas. */}}
{{- define "resnet-serve.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.minReplicas }}{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}
