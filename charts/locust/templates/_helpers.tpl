{{/* Chart name, truncated to 63 characters (the DNS label limit). */}}
{{- define "locust.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 63 characters. If the release name already
contains the chart name, it is used as is.
*/}}
{{- define "locust.fullname" -}}
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

{{/* Name of a component's object: the full name with a suffix, within 63 characters. */}}
{{- define "locust.componentName" -}}
{{- $suffix := index . 1 }}
{{- printf "%s-%s" (include "locust.fullname" (index . 0) | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{/* Chart name and version, as used by the helm.sh/chart label. */}}
{{- define "locust.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "locust.labels" -}}
helm.sh/chart: {{ include "locust.chart" . }}
{{ include "locust.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: resnet-serve
{{- end }}

{{/* Selector labels shared by the release's pods. */}}
{{- define "locust.selectorLabels" -}}
app.kubernetes.io/name: {{ include "locust.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The image reference. */}}
{{- define "locust.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* ConfigMap holding the locustfile and its modules. */}}
{{- define "locust.configMapName" -}}
{{- default (include "locust.componentName" (list . "locustfile")) .Values.locustfile.existingConfigMap }}
{{- end }}

{{/* Locust arguments shared by master and workers: the suite's own options. */}}
{{- define "locust.testArgs" -}}
{{- $t := .Values.test -}}
- --locustfile=/mnt/locust/locustfile.py
- --shape={{ $t.shape }}
{{- /* Workers get no --run-time, --users or --spawn-rate: the shape's own copies. */}}
- --shape-users={{ $t.users }}
- --shape-spawn-rate={{ $t.spawnRate }}
{{- with $t.runTime }}
- --shape-run-time={{ . }}
{{- end }}
- --step-users={{ $t.stepUsers }}
- --step-time={{ $t.stepTime }}
- --steps={{ $t.steps }}
- --spike-users={{ $t.spikeUsers }}
- --spike-at={{ $t.spikeAt }}
- --spike-duration={{ $t.spikeDuration }}
- --ramp-time={{ $t.rampTime }}
- --arrival-rate={{ $t.arrivalRate }}
- --images-per-request={{ $t.imagesPerRequest }}
{{- if eq .Values.images.source "pvc" }}
- --images-dir=/images
{{- end }}
{{- with $t.tags }}
- --tags
{{- range . }}
- {{ . | quote }}
{{- end }}
{{- end }}
{{- with $t.excludeTags }}
- --exclude-tags
{{- range . }}
- {{ . | quote }}
{{- end }}
{{- end }}
{{- range $t.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Volumes of every pod. */}}
{{- define "locust.volumes" -}}
- name: locustfile
  configMap:
    name: {{ include "locust.configMapName" . }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if eq .Values.images.source "pvc" }}
- name: images
  persistentVolumeClaim:
    claimName: {{ required "images.claimName is required with images.source=pvc" .Values.images.claimName }}
    readOnly: true
{{- end }}
{{- end }}

{{/* Volume mounts of every Locust container. */}}
{{- define "locust.volumeMounts" -}}
- name: locustfile
  mountPath: /mnt/locust
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if eq .Values.images.source "pvc" }}
- name: images
  mountPath: /images
  readOnly: true
  {{- with .Values.images.subPath }}
  subPath: {{ . }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Extra environment of every Locust container (values env, envFrom). */}}
{{- define "locust.env" -}}
{{- with .Values.env }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.envFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Suffix of the master and worker Jobs: a Job's pod template cannot change, so a `helm upgrade`
with other values or another locustfile makes new Jobs (a new run) instead of failing.
*/}}
{{- define "locust.runSuffix" -}}
{{- print (toJson .Values) (include (print .Template.BasePath "/configmap.yaml") .) | sha256sum | trunc 8 }}
{{- end }}

{{/* Name of the reports claim. */}}
{{- define "locust.reportsClaim" -}}
{{- default (include "locust.componentName" (list . "reports")) .Values.reports.existingClaim }}
{{- end }}

{{/* Pod-level settings shared by master and workers. */}}
{{- define "locust.podCommon" -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
